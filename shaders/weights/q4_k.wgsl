// block_q4_K (144 bytes): d f16, dmin f16, 12 bytes of packed 6-bit scales and mins, 128 bytes of
// nibbles. Values come in 4 groups of 64: the low nibbles of 32 bytes, then their high nibbles.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 256u) * 144u;
    let k = i % 256u;
    let group = k / 64u;
    let l = k % 64u;
    let sm = scale_min_k4(base, 2u * group + l / 32u);
    let byte = wbyte(base + 16u + 32u * group + (l % 32u));
    let q = select(byte >> 4u, byte & 15u, l < 32u);
    return wf16(base) * f32(sm.x) * f32(q) - wf16(base + 2u) * f32(sm.y);
}
