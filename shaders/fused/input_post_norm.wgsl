// The product's input formed in place from a post-norm residual sum: the staged rows hold y (an
// operand, or the sum of the parts), and become x + rmsnorm(y) * post_w (POST_EPS), as the
// unfused norm and add would have stored them. The first workgroup also stores the formed rows
// (`store_formed`) when later steps read them.
var<workgroup> post_inv: array<f32, TILE>;

fn form_input(lid: u32, t0: u32) {
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
