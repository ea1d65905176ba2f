// Causal attention of one query head over the layer's cache for a tile of up to TILE consecutive
// tokens, by one workgroup of 64 invocations, flash-attention style: the keys are split into
// blocks of 64, one key per invocation, and a running maximum and sum per token rescale the
// output as each block arrives (online softmax). No score leaves the workgroup, and every key and
// value row read from the cache serves all the tokens of the tile (prefill reads each row once per
// TILE tokens, not once per token). Constants: N_HEAD, N_KV_HEAD, HEAD_DIM, SCALE, WINDOW
// (0 = attend to every earlier position), TILE. `attend_tile` leaves the tile's outputs in
// `rows`; the entry point and what happens to them are the variant's: attention_store.wgsl or
// attention_project.wgsl.
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;

const BLOCK: u32 = 64u;
// Output dimensions per invocation.
const DIMS: u32 = (HEAD_DIM + BLOCK - 1u) / BLOCK;
// Below every real score: marks a key the token does not see.
const MASKED: f32 = -3.4e38;

// The tile's query rows, then its output rows (TILE rows of HEAD_DIM).
var<workgroup> rows: array<f32, TILE * HEAD_DIM>;
// One block's scores, then their exponentials (TILE rows of BLOCK).
var<workgroup> probs: array<f32, TILE * BLOCK>;
// Per token: the largest score so far, the sum of exponentials so far, and the factor that
// carries the previous blocks over to the new maximum.
var<workgroup> running_max: array<f32, TILE>;
var<workgroup> running_sum: array<f32, TILE>;
var<workgroup> rescale: array<f32, TILE>;

// Head h of tokens t0 .. t0 + tiles - 1.
fn attend_tile(h: u32, t0: u32, tiles: u32, lid: u32) {
    let kv_row = N_KV_HEAD * HEAD_DIM;
    let kv_col = (h / (N_HEAD / N_KV_HEAD)) * HEAD_DIM;
    for (var i = lid; i < tiles * HEAD_DIM; i += BLOCK) {
        let tt = i / HEAD_DIM;
        rows[i] = q[((t0 + tt) * N_HEAD + h) * HEAD_DIM + i % HEAD_DIM];
    }
    if (lid < TILE) {
        running_max[lid] = MASKED;
        running_sum[lid] = 0.0;
    }
    // The keys any token of the tile sees: from the first token's window start to the last token.
    let first = params.n_past + t0;
    let last = first + tiles - 1u;
    var lo = 0u;
    if (WINDOW > 0u && first + 1u > WINDOW) {
        lo = first + 1u - WINDOW;
    }
    var acc: array<f32, TILE * DIMS>;
    workgroupBarrier();

    for (var b = lo; b <= last; b += BLOCK) {
        let j = b + lid;
        var s: array<f32, TILE>;
        if (j <= last) {
            let kb = j * kv_row + kv_col;
            for (var d = 0u; d < HEAD_DIM; d++) {
                let k = k_cache[kb + d];
                for (var tt = 0u; tt < tiles; tt++) {
                    s[tt] += rows[tt * HEAD_DIM + d] * k;
                }
            }
        }
        for (var tt = 0u; tt < tiles; tt++) {
            let pos = first + tt;
            let seen = j <= pos && (WINDOW == 0u || j + WINDOW > pos);
            probs[tt * BLOCK + lid] = select(MASKED, s[tt] * SCALE, seen);
        }
        workgroupBarrier();

        if (lid < tiles) {
            var m = running_max[lid];
            for (var i = 0u; i < BLOCK; i++) {
                m = max(m, probs[lid * BLOCK + i]);
            }
            rescale[lid] = exp(running_max[lid] - m);
            running_max[lid] = m;
        }
        workgroupBarrier();

        for (var tt = 0u; tt < tiles; tt++) {
            let p = probs[tt * BLOCK + lid];
            probs[tt * BLOCK + lid] = select(0.0, exp(p - running_max[tt]), p > MASKED);
        }
        workgroupBarrier();

        if (lid < tiles) {
            var sum = 0.0;
            for (var i = 0u; i < BLOCK; i++) {
                sum += probs[lid * BLOCK + i];
            }
            running_sum[lid] = running_sum[lid] * rescale[lid] + sum;
        }
        let keys = min(BLOCK, last + 1u - b);
        for (var c = 0u; c < DIMS; c++) {
            let d = lid + c * BLOCK;
            if (d < HEAD_DIM) {
                for (var tt = 0u; tt < tiles; tt++) {
                    acc[tt * DIMS + c] *= rescale[tt];
                }
                for (var i = 0u; i < keys; i++) {
                    let v = v_cache[(b + i) * kv_row + kv_col + d];
                    for (var tt = 0u; tt < tiles; tt++) {
                        acc[tt * DIMS + c] += probs[tt * BLOCK + i] * v;
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var c = 0u; c < DIMS; c++) {
        let d = lid + c * BLOCK;
        if (d < HEAD_DIM) {
            for (var tt = 0u; tt < tiles; tt++) {
                rows[tt * HEAD_DIM + d] = acc[tt * DIMS + c] / running_sum[tt];
            }
        }
    }
    workgroupBarrier();
}
