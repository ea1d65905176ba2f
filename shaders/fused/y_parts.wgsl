// The staged input of token t, column i, with a post-norm: its y, the sum of PARTS per-head parts
// (`parts`, rows of PARTS * K values, from an attention_project dispatch), added in part order.
fn input_at(t: u32, i: u32) -> f32 {
    var v = parts[t * PARTS * K + i];
    for (var h = 1u; h < PARTS; h++) {
        v += parts[(t * PARTS + h) * K + i];
    }
    return v;
}
