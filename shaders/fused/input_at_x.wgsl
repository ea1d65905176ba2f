// The staged input of token t, column i: x as stored.
fn input_at(t: u32, i: u32) -> f32 {
    return x[t * K + i];
}
