// The post-norm's y of token t, column i: an operand.
fn y_at(t: u32, i: u32) -> f32 {
    return post_y[t * K + i];
}
