// y = a (OP) b elementwise over rows of N values; OP 0 adds, 1 multiplies.
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
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
        y[e] = a[e] + b[e];
    } else {
        y[e] = a[e] * b[e];
    }
}
