// Work item j: row N0 + j of the N outputs plus the residual's (`residual_at`).
fn epilogue(j: u32, t0: u32, tiles: u32, lid: u32) {
    if (j >= ITEMS) {
        return;
    }
    let acc = dot_row(j, t0, tiles);
    for (var tt = 0u; tt < tiles; tt++) {
        y[(t0 + tt) * N + N0 + j] = residual_at(t0 + tt, j) + acc[tt];
    }
}
