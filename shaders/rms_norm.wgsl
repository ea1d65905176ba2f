// RMSNorm over groups of N values, GROUPS groups a row: y = x / sqrt(mean(x^2) + EPS) * w.
// One workgroup per (group, token).
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    if (t >= params.n_tokens) {
        return;
    }
    let base = t * N * GROUPS + wid.x * N;
    var sum = 0.0;
    for (var i = lid; i < N; i += 64u) {
        sum += x[base + i] * x[base + i];
    }
    let scale = inverseSqrt(workgroup_sum(lid, sum) / f32(N) + EPS);
    for (var i = lid; i < N; i += 64u) {
        y[base + i] = x[base + i] * scale * w[i];
    }
}
