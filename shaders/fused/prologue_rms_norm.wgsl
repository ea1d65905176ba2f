// RMSNorm prologue: the workgroup computes 1 / sqrt(mean(x^2) + EPS) of each of its tokens, and
// the product reads x * that * norm_w, as the unfused rms_norm kernel would have stored it.
var<workgroup> partial: array<f32, 64>;
var<workgroup> inv_rms: array<f32, TILE>;

fn prologue(lid: u32, t0: u32) {
    for (var tt = 0u; tt < TILE; tt++) {
        let t = t0 + tt;
        var sum = 0.0;
        if (t < params.n_tokens) {
            for (var i = lid; i < K; i += 64u) {
                let v = x_raw(t0, tt, i);
                sum += v * v;
            }
        }
        partial[lid] = sum;
        workgroupBarrier();
        for (var stride = 32u; stride > 0u; stride >>= 1u) {
            if (lid < stride) {
                partial[lid] += partial[lid + stride];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            inv_rms[tt] = inverseSqrt(partial[0] / f32(K) + EPS);
        }
        workgroupBarrier();
    }
}

fn x_at(t0: u32, tt: u32, i: u32) -> f32 {
    return x_raw(t0, tt, i) * inv_rms[tt] * norm_w[i];
}
