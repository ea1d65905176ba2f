// Byte-level access to a quantized weight bound as `wq: array<u32>` (GGML blocks are not
// word-aligned). ROW_BYTES: bytes per row of the weight.

fn wbyte(b: u32) -> u32 {
    return (wq[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

fn wf16(b: u32) -> f32 {
    return half_to_f32(wbyte(b) | (wbyte(b + 1u) << 8u));
}

fn wu32(b: u32) -> u32 {
    return wbyte(b) | (wbyte(b + 1u) << 8u) | (wbyte(b + 2u) << 16u) | (wbyte(b + 3u) << 24u);
}

fn wi8(b: u32) -> f32 {
    return f32(i32(wbyte(b) << 24u) >> 24u);
}
