// RMSNorm of each q and k head (HEAD_DIM values, QK_EPS; weights q_norm_w and k_norm_w) on the
// values the epilogue's items hold, before RoPE. A head's HEAD_DIM / 4 items share a workgroup
// (the compiler fuses only head sizes that divide its 256 values), so they sum their squares
// through workgroup memory. V heads stay as they are. Call in uniform control flow.
var<workgroup> head_sq: array<f32, 64u * TILE>;

fn head_norm(lid: u32, head: u32, live: bool, values: ptr<function, array<array<vec2<f32>, TILE>, 2>>,
             dims: array<vec2<u32>, 2>) {
    for (var tt = 0u; tt < TILE; tt++) {
        var s = 0.0;
        if (live) {
            let a = (*values)[0][tt];
            let b = (*values)[1][tt];
            s = dot(a, a) + dot(b, b);
        }
        head_sq[lid * TILE + tt] = s;
    }
    workgroupBarrier();
    if (!live || head >= N_HEAD + N_KV_HEAD) {
        return;
    }
    let per_head = HEAD_DIM / 4u;
    let first = lid / per_head * per_head;
    for (var tt = 0u; tt < TILE; tt++) {
        var sum = 0.0;
        for (var l = first; l < first + per_head; l++) {
            sum += head_sq[l * TILE + tt];
        }
        let inv = inverseSqrt(sum / f32(HEAD_DIM) + QK_EPS);
        for (var s = 0u; s < 2u; s++) {
            let d = dims[s];
            var w = vec2<f32>(k_norm_w[d.x], k_norm_w[d.y]);
            if (head < N_HEAD) {
                w = vec2<f32>(q_norm_w[d.x], q_norm_w[d.y]);
            }
            (*values)[s][tt] = (*values)[s][tt] * inv * w;
        }
    }
}
