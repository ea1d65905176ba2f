// The rotation angle of pair i (of N_ROT / 2) at position pos: pos * BASE^(-2i / N_ROT).
fn rope_theta(pos: u32, i: u32) -> f32 {
    return f32(pos) * exp2(-2.0 * f32(i) / f32(N_ROT) * log2(BASE));
}
