// f32 weights: element i of row r.
fn weight(r: u32, i: u32) -> f32 {
    return bitcast<f32>(wq[r * (ROW_BYTES / 4u) + i]);
}
