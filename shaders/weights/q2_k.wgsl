// block_q2_K (84 bytes): 16 scale bytes (low nibble a 4-bit scale, high nibble a 4-bit min), 64
// bytes of 2-bit quants, d f16, dmin f16. Two halves of 128 values, each four runs of 32 that
// take successive bit pairs of the same 32 quant bytes; a scale byte serves 16 values.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 256u) * 84u;
    let k = i % 256u;
    let half = k / 128u;
    let run = (k % 128u) / 32u;
    let l = k % 32u;
    let q = (wbyte(base + 16u + 32u * half + l) >> (2u * run)) & 3u;
    let sc = wbyte(base + 8u * half + 2u * run + l / 16u);
    return wf16(base + 80u) * f32(sc & 15u) * f32(q) - wf16(base + 82u) * f32(sc >> 4u);
}
