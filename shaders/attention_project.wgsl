// Attention's output projected per head: part h of the output row (rows of N_HEAD * N) is the
// columns of W_o (bound as `wq`, rows of ROW_BYTES) that head h's output multiplies, times that
// output. The parts sum to the projection; the consumer adds them. One workgroup per (head, TILE
// tokens), so each weight is decoded once per TILE tokens.
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> wq: array<u32>;
// The step's page tables.
@group(0) @binding(6) var<storage, read> pages: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t0 = wid.y * TILE;
    if (t0 >= params.n_tokens) {
        return;
    }
    let tiles = min(TILE, params.n_tokens - t0);
    attend(h, t0, tiles, lid);
    for (var j = lid; j < N; j += BLOCK) {
        // The tile's tokens in two quads, as `tile` holds them.
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        for (var d = 0u; d < HEAD_DIM; d++) {
            let w = weight(j, h * HEAD_DIM + d);
            a0 += w * tile[2u * d];
            a1 += w * tile[2u * d + 1u];
        }
        for (var tt = 0u; tt < tiles; tt++) {
            y[((t0 + tt) * N_HEAD + h) * N + j] = select(a0, a1, tt >= 4u)[tt % 4u];
        }
    }
}
