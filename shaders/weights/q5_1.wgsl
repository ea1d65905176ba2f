// block_q5_1 (24 bytes): d f16, m f16, qh u32, 16 bytes of nibbles; x = d * q + m.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 32u) * 24u;
    let j = i % 32u;
    let byte = wbyte(base + 8u + (j % 16u));
    let low = select(byte >> 4u, byte & 15u, j < 16u);
    let high = (wu32(base + 4u) >> j) & 1u;
    return wf16(base) * f32(low | (high << 4u)) + wf16(base + 2u);
}

