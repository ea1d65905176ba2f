// Attention's output stored as it is: rows of N_HEAD * HEAD_DIM.
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

fn store(t: u32, h: u32, d: u32, v: f32) {
    y[(t * N_HEAD + h) * HEAD_DIM + d] = v;
}

fn finish(t: u32, h: u32, lid: u32) {}
