// Elementwise over rows of N values: OP 0 = SiLU, 1 = GELU (tanh approximation), 2 = scale by
// FACTOR.
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= N || t >= params.n_tokens) {
        return;
    }
    let e = t * N + i;
    let v = x[e];
    if (OP == 2u) {
        y[e] = v * FACTOR;
    } else {
        y[e] = activation(v, OP);
    }
}
