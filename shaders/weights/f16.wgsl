fn weight(r: u32, i: u32) -> f32 {
    let b = r * ROW_BYTES + i * 2u;
    return wf16(b);
}
