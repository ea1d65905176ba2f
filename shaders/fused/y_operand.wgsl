// The staged input of token t, column i, with a post-norm: its y, an operand.
fn input_at(t: u32, i: u32) -> f32 {
    return post_y[t * K + i];
}
