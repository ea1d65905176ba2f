// The product's input formed in workgroup memory from a post-norm residual sum:
// x + rmsnorm(y) * post_w (POST_EPS), y through `y_at` (an operand, or the sum of the parts), as
// the unfused norm and add would have stored it. The first workgroup also stores the formed rows
// (`store_formed`) when later steps read them.
var<workgroup> staged: array<f32, STAGED>;
var<workgroup> post_inv: array<f32, TILE>;

fn stage(lid: u32, t0: u32) {
    for (var e = lid; e < TILE * K; e += 64u) {
        let t = t0 + e / K;
        var v = 0.0;
        if (t < params.n_tokens) {
            v = y_at(t, e % K);
        }
        staged[e] = v;
    }
    workgroupBarrier();
    for (var tt = 0u; tt < TILE; tt++) {
        let inv = staged_inv_rms(lid, tt, POST_EPS);
        if (lid == 0u) {
            post_inv[tt] = inv;
        }
    }
    workgroupBarrier();
    for (var e = lid; e < TILE * K; e += 64u) {
        let t = t0 + e / K;
        if (t < params.n_tokens) {
            let i = e % K;
            let v = x[t * K + i] + staged[e] * post_inv[e / K] * post_w[i];
            staged[e] = v;
            store_formed(t * K + i, v);
        }
    }
    workgroupBarrier();
}

fn x_raw(t0: u32, tt: u32, i: u32) -> f32 {
    return staged[tt * K + i];
}
