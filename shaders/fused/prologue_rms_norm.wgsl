// RMSNorm prologue, on the staged input in place: the workgroup computes 1 / sqrt(mean(x^2) + EPS)
// of each of its tokens and scales the staged values to x * that * norm_w, as the unfused rms_norm
// kernel would have stored them.
var<workgroup> inv_rms: array<f32, TILE>;

fn prologue(lid: u32, t0: u32) {
    for (var tt = 0u; tt < TILE; tt++) {
        let inv = staged_inv_rms(lid, tt, EPS);
        if (lid == 0u) {
            inv_rms[tt] = inv;
        }
    }
    workgroupBarrier();
    for (var e = lid; e < TILE * K; e += 64u) {
        staged[e] = staged[e] * inv_rms[e / K] * norm_w[e % K];
    }
    workgroupBarrier();
}

fn x_at(t0: u32, tt: u32, i: u32) -> f32 {
    return staged[tt * K + i];
}
