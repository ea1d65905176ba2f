// Rows of an embedding table, picked by token id, times SCALE (Gemma's sqrt(n_embd); 1 for the
// others). Constants: N (row length) and the table's decoders (`weight`, over every binding the
// table takes). Bindings: the table's first at 1, ids at 2, y at 3, the table's others from 4.
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= N || t >= params.n_tokens) {
        return;
    }
    y[t * N + i] = weight(ids[t], i) * SCALE;
}
