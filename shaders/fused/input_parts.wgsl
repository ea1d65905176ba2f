// The product's input is x plus PARTS per-head parts (`parts`, rows of PARTS * K values, from
// an attention_project dispatch), added once per workgroup, in part order, into workgroup memory
// for the tile's tokens (STAGED = TILE * K values).
var<workgroup> staged: array<f32, STAGED>;

fn stage(lid: u32, t0: u32) {
    for (var e = lid; e < TILE * K; e += 64u) {
        let t = t0 + e / K;
        let i = e % K;
        var v = 0.0;
        if (t < params.n_tokens) {
            v = x[t * K + i];
            for (var h = 0u; h < PARTS; h++) {
                v += parts[(t * PARTS + h) * K + i];
            }
        }
        staged[e] = v;
    }
    workgroupBarrier();
}

fn x_raw(t0: u32, tt: u32, i: u32) -> f32 {
    return staged[tt * K + i];
}
