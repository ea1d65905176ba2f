// block_q5_K (176 bytes): d f16, dmin f16, 12 bytes of packed 6-bit scales and mins (as Q4_K's),
// 32 bytes of fifth bits, 128 bytes of nibbles. Values come in 4 groups of 64: the low nibbles of
// 32 bytes, then their high nibbles; bit 2g of fifth-bit byte l belongs to value 64g + l, bit
// 2g + 1 to value 64g + 32 + l.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 256u) * 176u;
    let k = i % 256u;
    let group = k / 64u;
    let l = k % 64u;
    let sub = 2u * group + l / 32u;
    let sm = scale_min_k4(base, sub);
    let byte = wbyte(base + 48u + 32u * group + (l % 32u));
    let low = select(byte >> 4u, byte & 15u, l < 32u);
    let high = (wbyte(base + 16u + (l % 32u)) >> sub) & 1u;
    return wf16(base) * f32(sm.x) * f32(low + 16u * high) - wf16(base + 2u) * f32(sm.y);
}
