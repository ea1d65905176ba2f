// block_q4_0 (18 bytes): d f16, 16 bytes of nibbles; x = d * (q - 8).
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 32u) * 18u;
    let j = i % 32u;
    let byte = wbyte(base + 2u + (j % 16u));
    let q = select(byte >> 4u, byte & 15u, j < 16u);
    return wf16(base) * (f32(q) - 8.0);
}
