// Attention's output projected per head: part h of the output row (rows of N_HEAD * N) is the
// columns of W_o (bound as `wq`, rows of ROW_BYTES) that head h's output multiplies, times that
// output. The parts sum to the projection; the consumer adds them.
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> wq: array<u32>;

var<workgroup> head_out: array<f32, HEAD_DIM>;

fn store(t: u32, h: u32, d: u32, v: f32) {
    head_out[d] = v;
}

fn finish(t: u32, h: u32, lid: u32) {
    workgroupBarrier();
    for (var j = lid; j < N; j += 64u) {
        var acc = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc += weight(j, h * HEAD_DIM + d) * head_out[d];
        }
        y[(t * N_HEAD + h) * N + j] = acc;
    }
}
