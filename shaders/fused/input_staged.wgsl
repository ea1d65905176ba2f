// The product reads its input from workgroup memory (STAGED = TILE * K values), loaded once per
// workgroup through `input_at` (fused/input_at_x.wgsl, input_at_x_parts.wgsl, or a post-norm's
// y_operand.wgsl or y_parts.wgsl) and then formed in place by `form_input` (nothing, or
// fused/input_post_norm.wgsl), so prologues can work on it in place and the inner loop reads no
// storage but the weights.
var<workgroup> staged: array<f32, STAGED>;

fn stage(lid: u32, t0: u32) {
    for (var e = lid; e < TILE * K; e += 64u) {
        let t = t0 + e / K;
        var v = 0.0;
        if (t < params.n_tokens) {
            v = input_at(t, e % K);
        }
        staged[e] = v;
    }
    workgroupBarrier();
    form_input(lid, t0);
}

fn x_raw(t0: u32, tt: u32, i: u32) -> f32 {
    return staged[tt * K + i];
}
