// IEEE half precision by hand, with integer operations only, so no device needs f16 support and
// every device rounds as the CPU does.

// Half to f32: exact for every value, subnormals included.
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

// f32 to half, rounded to nearest even as the CPU's conversion (F16C) rounds: overflow goes to
// infinity, NaN stays NaN, values below the normal range become subnormals.
fn f32_to_half(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    if (a >= 0x47800000u) {
        return sign | 0x7c00u;
    }
    if (a < 0x38800000u) {
        // Scaling by 2^24 is exact; `round` rounds half to even.
        return sign | u32(round(bitcast<f32>(a) * 16777216.0));
    }
    // Rebias the exponent and round the 13 dropped bits to nearest even; a carry moves into the
    // exponent, and past 65504 into infinity.
    return sign | ((a - 0x38000000u + 0xfffu + ((a >> 13u) & 1u)) >> 13u);
}
