// block_q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed scales,
// d f16. Two halves of 128 values, each four runs of 32 sharing ql/qh bytes.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 256u) * 210u;
    let k = i % 256u;
    let half = k / 128u;
    let run = (k % 128u) / 32u;
    let l = k % 32u;
    let ql = wbyte(base + 64u * half + l + 32u * (run & 1u));
    let low = select(ql & 15u, ql >> 4u, run >= 2u);
    let qh = (wbyte(base + 128u + 32u * half + l) >> (2u * run)) & 3u;
    let q = i32(low | (qh << 4u)) - 32;
    let scale = wi8(base + 192u + 8u * half + 2u * run + l / 16u);
    return wf16(base + 208u) * scale * f32(q);
}
