// Appends the step's keys and values (rows of ROW values) to a layer's cache at n_past + t.
@group(0) @binding(1) var<storage, read_write> k: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    let t = gid.y;
    if (e >= ROW || t >= params.n_tokens) {
        return;
    }
    let at = (params.n_past + t) * ROW + e;
    k_cache[at] = k[t * ROW + e];
    v_cache[at] = v[t * ROW + e];
}
