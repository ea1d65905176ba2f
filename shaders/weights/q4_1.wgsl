// block_q4_1 (20 bytes): d f16, m f16, 16 bytes of nibbles; x = d * q + m.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 32u) * 20u;
    let j = i % 32u;
    let byte = wbyte(base + 4u + (j % 16u));
    let q = select(byte >> 4u, byte & 15u, j < 16u);
    return wf16(base) * f32(q) + wf16(base + 2u);
}

