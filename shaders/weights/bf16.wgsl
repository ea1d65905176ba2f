fn weight(r: u32, i: u32) -> f32 {
    let b = r * ROW_BYTES + i * 2u;
    return bitcast<f32>((wbyte(b) | (wbyte(b + 1u) << 8u)) << 16u);
}
