// The K largest logits of the step's last token, largest first (ties: lower id first), and the
// log-sum-exp over the whole row, so a sampler needs a few hundred bytes instead of the full row.
// K is params.k (at most MAX_K); constants: N_VOCAB, MAX_K. Output: ids[0..K], then the K logits
// (as bits), then the log-sum-exp (as bits). One workgroup of 256 invocations.
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_id: array<u32, 256>;

// Whether (v, i) comes before (w, j): larger value first, then lower id.
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

fn reduce_best(lid: u32) {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride && before(best_value[lid + stride], best_id[lid + stride], best_value[lid], best_id[lid])) {
            best_value[lid] = best_value[lid + stride];
            best_id[lid] = best_id[lid + stride];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let row = (params.n_tokens - 1u) * N_VOCAB;
    let k = min(params.k, MAX_K);

    // The row's maximum, then the sum of exponentials relative to it.
    var m = -3.4e38;
    for (var i = lid; i < N_VOCAB; i += 256u) {
        m = max(m, logits[row + i]);
    }
    best_value[lid] = m;
    best_id[lid] = lid;
    reduce_best(lid);
    let row_max = best_value[0];
    workgroupBarrier();
    var s = 0.0;
    for (var i = lid; i < N_VOCAB; i += 256u) {
        s += exp(logits[row + i] - row_max);
    }
    best_value[lid] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            best_value[lid] += best_value[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        result[2u * k] = bitcast<u32>(row_max + log(best_value[0]));
    }
    workgroupBarrier();

    // K rounds, each taking the best entry that comes after the previous round's.
    var prev_value = 3.4e38;
    var prev_id = 0u;
    var first = true;
    for (var r = 0u; r < k; r++) {
        var v = -3.4e38;
        var id = 0xffffffffu;
        for (var i = lid; i < N_VOCAB; i += 256u) {
            let x = logits[row + i];
            let after_prev = first || before(prev_value, prev_id, x, i);
            if (after_prev && before(x, i, v, id)) {
                v = x;
                id = i;
            }
        }
        best_value[lid] = v;
        best_id[lid] = id;
        reduce_best(lid);
        prev_value = best_value[0];
        prev_id = best_id[0];
        first = false;
        if (lid == 0u) {
            result[r] = prev_id;
            result[k + r] = bitcast<u32>(prev_value);
        }
        workgroupBarrier();
    }
}
