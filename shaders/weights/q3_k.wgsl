// block_q3_K (110 bytes): 32 bytes of high-bit masks, 64 bytes of low 2-bit quants, 12 bytes of
// sixteen packed 6-bit scales (offset by 32), d f16. Two halves of 128 values, each four runs of
// 32 taking successive bit pairs of the same 32 quant bytes; value l of run j in half h has its
// high bit at bit 4h + j of mask byte l, and a clear high bit subtracts 4.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 256u) * 110u;
    let k = i % 256u;
    let half = k / 128u;
    let run = (k % 128u) / 32u;
    let l = k % 32u;
    let low = (wbyte(base + 32u + 32u * half + l) >> (2u * run)) & 3u;
    let high = (wbyte(base + l) >> (4u * half + run)) & 1u;
    let q = i32(low) - select(4, 0, high == 1u);
    let s = 8u * half + 2u * run + l / 16u;
    let packed = select(wbyte(base + 96u + s - 8u) >> 4u, wbyte(base + 96u + s) & 15u, s < 8u);
    let top = (wbyte(base + 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
    let scale = i32(packed | (top << 4u)) - 32;
    return wf16(base + 108u) * f32(scale) * f32(q);
}
