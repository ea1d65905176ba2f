// The residual of output j of token t, as stored.
fn residual_at(t: u32, j: u32) -> f32 {
    return residual[t * N + N0 + j];
}
