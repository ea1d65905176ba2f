// block_q8_0 (34 bytes): d f16, 32 signed bytes; x = d * q.
fn weight(r: u32, i: u32) -> f32 {
    let base = r * ROW_BYTES + (i / 32u) * 34u;
    return wf16(base) * wi8(base + 2u + (i % 32u));
}
