// Attention's output stored as it is (rows of N_HEAD * HEAD_DIM); one workgroup per (head,
// token).
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

fn store(slot: u32, t: u32, h: u32, d: u32, v: f32) {
    y[(t * N_HEAD + h) * HEAD_DIM + d] = v;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (wid.y >= params.n_tokens) {
        return;
    }
    attend(wid.y, wid.x, lid, 0u);
}
