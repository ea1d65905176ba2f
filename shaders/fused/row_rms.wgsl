// 1 / sqrt(mean(v^2) + eps) of the staged row tt (K values), reduced by the whole workgroup: every
// invocation gets it. Call in uniform control flow.
fn staged_inv_rms(lid: u32, tt: u32, eps: f32) -> f32 {
    var sum = 0.0;
    for (var i = lid; i < K; i += 64u) {
        let v = staged[tt * K + i];
        sum += v * v;
    }
    return inverseSqrt(workgroup_sum(lid, sum) / f32(K) + eps);
}
