// Work item j: row N0 + j of the N outputs (W may be split by rows across dispatches).
fn epilogue(j: u32, t0: u32, tiles: u32, lid: u32) {
    if (j >= ITEMS) {
        return;
    }
    let acc = dot_row(j, t0, tiles);
    for (var tt = 0u; tt < tiles; tt++) {
        y[(t0 + tt) * N + N0 + j] = acc[tt];
    }
}
