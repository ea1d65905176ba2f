// The matrix-product archetype: `stage` (fused/input_*.wgsl, which provides `x_raw`) and
// `prologue` (fused/prologue_*.wgsl, which provides `x_at`) prepare the inputs of the workgroup's
// TILE tokens, and `epilogue` (fused/epilogue_*.wgsl) computes and stores work item `item` with
// `dot_row` (fused/dot_row.wgsl, one per stacked weight). Constants: K, TILE, ITEMS (work items),
// FROM_FIRST_ROW (start at params.first_row: the logits step) and the parts'; the bindings are
// declared by the compiler. One invocation per work item and TILE tokens, so every weight is
// decoded once per TILE tokens. Every invocation of a workgroup reaches the epilogue, those past
// ITEMS included, so that epilogues may share values through workgroup memory.

// Whether this is the workgroup that stores a formed input (fused/input_post_norm.wgsl).
var<private> first_group: bool;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t0 = select(0u, params.first_row, FROM_FIRST_ROW) + wid.y * TILE;
    first_group = wid.x == 0u;
    stage(lid, t0);
    prologue(lid, t0);
    if (t0 >= params.n_tokens) {
        return;
    }
    epilogue(gid.x, t0, min(TILE, params.n_tokens - t0), lid);
}
