// Gate and up in one product of N rows: work item j is output j of N / 2,
// activation(gate row j) * (up row N / 2 + j). ACT: the activation's code.
fn epilogue(j: u32, t0: u32, tiles: u32, lid: u32) {
    if (j >= ITEMS) {
        return;
    }
    let gate = dot_row(j, t0, tiles);
    let up = dot_row(N / 2u + j, t0, tiles);
    for (var tt = 0u; tt < tiles; tt++) {
        y[(t0 + tt) * (N / 2u) + j] = activation(gate[tt], ACT) * up[tt];
    }
}
