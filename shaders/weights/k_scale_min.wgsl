// The eight 6-bit scales and eight 6-bit mins of a Q4_K or Q5_K block, packed in the 12 bytes at
// base + 4: sub-block j's (scale, min).
fn scale_min_k4(base: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(wbyte(base + 4u + j) & 63u, wbyte(base + 8u + j) & 63u);
    }
    let s = (wbyte(base + 8u + j) & 15u) | ((wbyte(base + j) >> 6u) << 4u);
    let m = (wbyte(base + 8u + j) >> 4u) | ((wbyte(base + 4u + j) >> 6u) << 4u);
    return vec2<u32>(s, m);
}
