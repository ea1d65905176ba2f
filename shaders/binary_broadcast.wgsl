// y = a (OP) w over rows of N values, with one weight row w shared by all tokens; OP 0 adds,
// 1 multiplies.
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= N || t >= params.n_tokens) {
        return;
    }
    let e = t * N + i;
    if (OP == 0u) {
        y[e] = a[e] + w[i];
    } else {
        y[e] = a[e] * w[i];
    }
}
