// No prologue: the product reads x as it is.
fn prologue(lid: u32, t0: u32) {}

fn x_at(t0: u32, tt: u32, i: u32) -> f32 {
    return x_raw(t0, tt, i);
}
