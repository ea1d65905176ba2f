// Causal attention of one query head over the layer's cache, by one workgroup.
// Scores go to a scratch region (CTX values per head and token): they are written, normalized and
// consumed in three phases separated by barriers. Constants: N_HEAD, N_KV_HEAD, HEAD_DIM, SCALE,
// WINDOW (0 = attend to every earlier position), CTX. The entry point and what happens to the
// output (`store`) are the variant's: attention_store.wgsl or attention_project.wgsl.
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;

var<workgroup> partial: array<f32, 64>;

fn reduce(lid: u32, is_max: bool) -> f32 {
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            if (is_max) {
                partial[lid] = max(partial[lid], partial[lid + stride]);
            } else {
                partial[lid] += partial[lid + stride];
            }
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

// Head h of token t, by the whole workgroup; hands each output value to `store` under `slot`.
fn attend(t: u32, h: u32, lid: u32, slot: u32) {
    let kv_row = N_KV_HEAD * HEAD_DIM;
    let kvh = h / (N_HEAD / N_KV_HEAD);
    let pos = params.n_past + t;
    var lo = 0u;
    if (WINDOW > 0u && pos + 1u > WINDOW) {
        lo = pos + 1u - WINDOW;
    }
    let n = pos + 1u - lo;
    let qb = (t * N_HEAD + h) * HEAD_DIM;
    let sb = (t * N_HEAD + h) * CTX;

    var local_max = -3.4e38;
    for (var j = lid; j < n; j += 64u) {
        let kb = (lo + j) * kv_row + kvh * HEAD_DIM;
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s += q[qb + d] * k_cache[kb + d];
        }
        s *= SCALE;
        scores[sb + j] = s;
        local_max = max(local_max, s);
    }
    partial[lid] = local_max;
    let m = reduce(lid, true);

    var local_sum = 0.0;
    for (var j = lid; j < n; j += 64u) {
        let e = exp(scores[sb + j] - m);
        scores[sb + j] = e;
        local_sum += e;
    }
    partial[lid] = local_sum;
    let total = reduce(lid, false);
    storageBarrier();

    for (var d = lid; d < HEAD_DIM; d += 64u) {
        var acc = 0.0;
        for (var j = 0u; j < n; j++) {
            acc += scores[sb + j] * v_cache[(lo + j) * kv_row + kvh * HEAD_DIM + d];
        }
        store(slot, t, h, d, acc / total);
    }
}
