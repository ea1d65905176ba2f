// Stores the step's keys and values (rows of KV_ROW values, KV_ROW even) in a layer's cache, row t
// in slot row_slot(t), two values per invocation, through `k_store2` and `v_store2` of the cache's element
// type (kv/f32.wgsl, kv/f16.wgsl), whose bindings 3 and 4 the compiler declares.
@group(0) @binding(1) var<storage, read_write> k: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = 2u * gid.x;
    let t = gid.y;
    if (e >= KV_ROW || t >= params.n_tokens) {
        return;
    }
    let j = row_slot(t);
    let at = t * KV_ROW + e;
    k_store2(j, e, k[at], k[at + 1u]);
    v_store2(j, e, v[at], v[at + 1u]);
}
