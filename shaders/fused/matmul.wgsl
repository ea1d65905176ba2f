// The matrix-product archetype: `stage` (fused/input_*.wgsl, which provides `x_raw`) and
// `prologue` (fused/prologue_*.wgsl, which provides `x_at`) prepare the inputs of the workgroup's
// TILE tokens, and `epilogue` (fused/epilogue_*.wgsl) computes and stores work item `item` with
// `dot_row`. Constants: K, TILE, ITEMS (work items), ROW_BYTES, FROM_FIRST_ROW (start at
// params.first_row: the logits step) and the parts'; the bindings are declared by the compiler.
// One invocation per work item and TILE tokens, so every weight is decoded once per TILE tokens.

// y[t0 + tt] . row r of W for the tile's tokens.
fn dot_row(r: u32, t0: u32, tiles: u32) -> array<f32, TILE> {
    var acc: array<f32, TILE>;
    for (var i = 0u; i < K; i++) {
        let wv = weight(r, i);
        for (var tt = 0u; tt < tiles; tt++) {
            acc[tt] += wv * x_at(t0, tt, i);
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t0 = select(0u, params.first_row, FROM_FIRST_ROW) + wid.y * TILE;
    stage(lid, t0);
    prologue(lid, t0);
    if (gid.x >= ITEMS || t0 >= params.n_tokens) {
        return;
    }
    epilogue(gid.x, t0, min(TILE, params.n_tokens - t0));
}
