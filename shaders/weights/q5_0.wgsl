// block_q5_0 (22 bytes): d f16, qh u32 (fifth bits), 16 bytes of nibbles; x = d * (q - 16).
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 32u) * 22u;
    let j = i % 32u;
    let byte = wbyte(base + 6u + (j % 16u));
    let low = select(byte >> 4u, byte & 15u, j < 16u);
    let high = (wu32(base + 2u) >> j) & 1u;
    return wf16(base) * (f32(low | (high << 4u)) - 16.0);
}
