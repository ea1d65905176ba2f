// Rows of an embedding table, picked by token id. Constants: N (row length), ROW_BYTES, ROW0 and
// ROWS (the part of the table bound as `wq`, when the table is split across bindings).
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= N || t >= params.n_tokens) {
        return;
    }
    let id = ids[t];
    if (id >= ROW0 && id < ROW0 + ROWS) {
        y[t * N + i] = weight(id - ROW0, i);
    }
}
