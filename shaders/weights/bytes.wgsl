// Byte-level access to a quantized weight bound as `wq: array<u32>` (GGML blocks are not
// word-aligned). ROW_BYTES: bytes per row of the weight.

fn wbyte(b: u32) -> u32 {
    return (wq[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

// IEEE half to f32 with integer operations only, so no device needs f16 support; exact for
// every value, subnormals included.
fn half_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if (exponent == 0u) {
        let v = f32(mantissa) * 5.9604645e-8;
        return select(v, -v, sign != 0u);
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
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
