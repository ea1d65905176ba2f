// y[t][N0 + j] = sum_i W[j][i] x[t][i] for the NP rows of W bound as `wq` (W is split across
// bindings when it is larger than one binding may be). Constants: K, N (row length of y), N0, NP,
// ROW_BYTES, and how the CPU interpreter quantizes activations for this weight type, which the
// GPU reproduces so both backends compute the same products: ACT 0 = f32 activations, 1 = 8-bit
// blocks of 32 with an f16 scale (ggml's Q8_0), 3 = the same with the block sum ggml's Q8_1 keeps
// for the weights' offset term (Q4_1 / Q5_1), 2 = 8-bit blocks of 256 with an f32 scale (Q8_K);
// ABLOCK is the block length. Each invocation owns one row of W and TILE tokens, so every
// weight is decoded once per TILE tokens.
const TILE: u32 = 8u;

@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// The f32 nearest to `v` rounded to IEEE half (ties to even), without needing f16 support: round
// to the half-precision quantum at v's magnitude, 2^-24 below the normal range. Overflow to
// infinity does not arise for activation scales (at most max|x| / 127).
fn round_to_f16(v: f32) -> f32 {
    let exponent = (bitcast<u32>(v) >> 23u) & 0xffu;
    var quantum = 5.9604645e-8;
    if (exponent >= 113u) {
        quantum = bitcast<f32>((exponent - 10u) << 23u);
    }
    return round(v / quantum) * quantum;
}

// C's roundf: halves away from zero (WGSL's round() goes to even).
fn round_away(v: f32) -> f32 {
    return sign(v) * floor(abs(v) + 0.5);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let t0 = gid.y * TILE;
    if (j >= NP || t0 >= params.n_tokens) {
        return;
    }
    let tiles = min(TILE, params.n_tokens - t0);
    var acc: array<f32, TILE>;
    // Per token of the tile: the factor that quantizes this block, and the one that restores it.
    var to_q: array<f32, TILE>;
    var from_q: array<f32, TILE>;
    // Q8_1 only: the block's f16 `s = d * sum(q)`, which multiplies the weights' offset m.
    var block_sum: array<f32, TILE>;
    for (var b0 = 0u; b0 < K; b0 += ABLOCK) {
        if (ACT != 0u) {
            for (var tt = 0u; tt < tiles; tt++) {
                let base = (t0 + tt) * K + b0;
                var amax = 0.0;
                var signed_max = 0.0;
                for (var i = 0u; i < ABLOCK; i++) {
                    let v = x[base + i];
                    if (abs(v) > amax) {
                        amax = abs(v);
                        signed_max = v;
                    }
                }
                if (ACT == 1u || ACT == 3u) {
                    let d = amax / 127.0;
                    to_q[tt] = select(0.0, 1.0 / d, d != 0.0);
                    from_q[tt] = round_to_f16(d);
                    if (ACT == 3u) {
                        var q_sum = 0.0;
                        for (var i = 0u; i < ABLOCK; i++) {
                            q_sum += round_away(x[base + i] * to_q[tt]);
                        }
                        block_sum[tt] = round_to_f16(d * q_sum);
                    }
                } else {
                    let iscale = select(0.0, -127.0 / signed_max, amax != 0.0);
                    to_q[tt] = iscale;
                    from_q[tt] = select(0.0, 1.0 / iscale, amax != 0.0);
                }
            }
        }
        var offset = 0.0;
        if (ACT == 3u) {
            offset = weight_min(j, b0);
            for (var tt = 0u; tt < tiles; tt++) {
                acc[tt] += offset * block_sum[tt];
            }
        }
        for (var i = b0; i < b0 + ABLOCK; i++) {
            let wv = weight(j, i) - offset;
            for (var tt = 0u; tt < tiles; tt++) {
                var xv = x[(t0 + tt) * K + i];
                if (ACT == 1u || ACT == 3u) {
                    xv = round_away(xv * to_q[tt]) * from_q[tt];
                } else if (ACT == 2u) {
                    xv = min(127.0, round(xv * to_q[tt])) * from_q[tt];
                }
                acc[tt] += wv * xv;
            }
        }
    }
    for (var tt = 0u; tt < tiles; tt++) {
        y[(t0 + tt) * N + N0 + j] = acc[tt];
    }
}
