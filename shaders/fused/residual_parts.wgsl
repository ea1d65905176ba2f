// The residual of output j of token t: the stored residual plus PARTS per-head parts (`parts`,
// rows of PARTS * N values), added in part order.
fn residual_at(t: u32, j: u32) -> f32 {
    var v = residual[t * N + N0 + j];
    for (var h = 0u; h < PARTS; h++) {
        v += parts[(t * PARTS + h) * N + N0 + j];
    }
    return v;
}
