// Attention's output stored as it is (rows of N_HEAD * HEAD_DIM); one workgroup per (head, TILE
// tokens).
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// The step's page tables.
@group(0) @binding(5) var<storage, read> pages: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t0 = wid.y * TILE;
    if (t0 >= params.n_tokens) {
        return;
    }
    let tiles = min(TILE, params.n_tokens - t0);
    attend(h, t0, tiles, lid);
    for (var i = lid; i < tiles * HEAD_DIM; i += BLOCK) {
        let tt = i / HEAD_DIM;
        let d = i % HEAD_DIM;
        y[((t0 + tt) * N_HEAD + h) * HEAD_DIM + d] = output_at(tt, d);
    }
}
