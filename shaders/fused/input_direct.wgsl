// The product reads x as stored.
fn stage(lid: u32, t0: u32) {}

fn x_raw(t0: u32, tt: u32, i: u32) -> f32 {
    return x[(t0 + tt) * K + i];
}
