// Causal attention of one query head over the layer's cache for a tile of up to TILE (= 8)
// consecutive tokens, by one workgroup of 64 invocations, flash-attention style: the keys are split
// into blocks of 64, one key per invocation, and a running maximum and sum per token rescale the
// output as each block arrives (online softmax), so no score leaves the workgroup. In a tile of
// several tokens every key and value row read from the cache serves all of them, the tokens held as
// two quads (vec4) of lanes; a single token (decode) takes its own path that computes one lane.
// Dimensions go four at a time, which also keeps every loop short: lavapipe stops a shader after
// 65535 loop iterations in all, and a block costs about 200 of them here.
// Constants: N_HEAD, N_KV_HEAD, HEAD_DIM (a multiple of 4), SCALE, WINDOW (0 = attend to every
// earlier position), TILE. The cache (bindings 2 and 3) is read through `k_load4` and `v_load4`
// of its element type's kv/*.wgsl. `attend` leaves the outputs in `tile`; the entry point and
// what happens to them are the variant's: attention_store.wgsl or attention_project.wgsl.
@group(0) @binding(1) var<storage, read_write> q: array<f32>;

const BLOCK: u32 = 64u;
// Groups of four dimensions, and how many of them each invocation accumulates.
const D4: u32 = HEAD_DIM / 4u;
const GROUPS: u32 = (D4 + BLOCK - 1u) / BLOCK;
// Below every real score: marks a key the token does not see.
const MASKED: f32 = -3.4e38;

// Per dimension d, the tile's values as two quads of tokens: [2d] tokens 0-3, [2d + 1] tokens 4-7.
// Holds q, then the output.
var<workgroup> tile: array<vec4<f32>, 2u * HEAD_DIM>;
// One block's scores, then their weights, in the same quads: [2i], [2i + 1] for key i.
var<workgroup> probs: array<vec4<f32>, 2u * BLOCK>;
// Per quad of tokens: the largest score so far, the sum of weights so far, and the factor that
// carries the earlier blocks over to a new maximum.
var<workgroup> running_max: array<vec4<f32>, 2>;
var<workgroup> running_sum: array<vec4<f32>, 2>;
var<workgroup> rescale: array<vec4<f32>, 2>;

// Which tokens of quad `quad` (the tile's first token at position `first`) see key `j`.
fn seen(j: u32, first: u32, quad: u32) -> vec4<bool> {
    let pos = vec4<u32>(first + 4u * quad) + vec4<u32>(0u, 1u, 2u, 3u);
    var s = vec4<u32>(j) <= pos;
    if (WINDOW > 0u) {
        s = s & (vec4<u32>(j + WINDOW) > pos);
    }
    return s;
}

// Folds the block's scores (in `probs`) into the running maximum and sum; leaves the block's
// weights in `probs` and in `rescale` the factor for what earlier blocks accumulated.
fn softmax_block(lid: u32) {
    workgroupBarrier();
    if (lid < 2u) {
        var m = running_max[lid];
        for (var i = 0u; i < BLOCK; i++) {
            m = max(m, probs[2u * i + lid]);
        }
        rescale[lid] = exp(running_max[lid] - m);
        running_max[lid] = m;
    }
    workgroupBarrier();
    let p0 = probs[2u * lid];
    let p1 = probs[2u * lid + 1u];
    probs[2u * lid] = select(vec4<f32>(0.0), exp(p0 - running_max[0]), p0 > vec4<f32>(MASKED));
    probs[2u * lid + 1u] = select(vec4<f32>(0.0), exp(p1 - running_max[1]), p1 > vec4<f32>(MASKED));
    workgroupBarrier();
    if (lid < 2u) {
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < BLOCK; i++) {
            sum += probs[2u * i + lid];
        }
        running_sum[lid] = running_sum[lid] * rescale[lid] + sum;
    }
}

// Four tokens' accumulators (column c: token c's four dimensions) plus weights p times values v.
fn accumulate(a: mat4x4<f32>, p: vec4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return a + mat4x4<f32>(v * p.x, v * p.y, v * p.z, v * p.w);
}

fn scale_columns(a: mat4x4<f32>, r: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a[0] * r.x, a[1] * r.y, a[2] * r.z, a[3] * r.w);
}

// Head h of tokens t0 .. t0 + tiles - 1.
fn attend(h: u32, t0: u32, tiles: u32, lid: u32) {
    for (var i = lid; i < TILE * HEAD_DIM; i += BLOCK) {
        let tt = i / HEAD_DIM;
        let d = i % HEAD_DIM;
        var v = 0.0;
        if (tt < tiles) {
            v = q[((t0 + tt) * N_HEAD + h) * HEAD_DIM + d];
        }
        tile[2u * d + tt / 4u][tt % 4u] = v;
    }
    if (lid < 2u) {
        running_max[lid] = vec4<f32>(MASKED);
        running_sum[lid] = vec4<f32>(0.0);
    }
    // The keys any token of the tile sees: from the first token's window start to the last token.
    let first = params.n_past + t0;
    let last = first + tiles - 1u;
    var lo = 0u;
    if (WINDOW > 0u && first + 1u > WINDOW) {
        lo = first + 1u - WINDOW;
    }
    let kv_col = (h / (N_HEAD / N_KV_HEAD)) * HEAD_DIM;
    workgroupBarrier();
    if (tiles == 1u) {
        attend_one(first, lo, kv_col, lid);
    } else {
        attend_tile(first, last, lo, kv_col, lid);
    }
    workgroupBarrier();
}

fn attend_tile(first: u32, last: u32, lo: u32, kv_col: u32, lid: u32) {
    var acc: array<mat4x4<f32>, 2u * GROUPS>;
    for (var b = lo; b <= last; b += BLOCK) {
        let j = b + lid;
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        if (j <= last) {
            for (var d4 = 0u; d4 < D4; d4++) {
                let k = k_load4(j, kv_col + 4u * d4);
                let d = 8u * d4;
                s0 += tile[d] * k.x + tile[d + 2u] * k.y + tile[d + 4u] * k.z + tile[d + 6u] * k.w;
                s1 += tile[d + 1u] * k.x + tile[d + 3u] * k.y + tile[d + 5u] * k.z + tile[d + 7u] * k.w;
            }
        }
        probs[2u * lid] = select(vec4<f32>(MASKED), s0 * SCALE, seen(j, first, 0u));
        probs[2u * lid + 1u] = select(vec4<f32>(MASKED), s1 * SCALE, seen(j, first, 1u));
        softmax_block(lid);

        let keys = min(BLOCK, last + 1u - b);
        for (var g = 0u; g < GROUPS; g++) {
            let d4 = lid + g * BLOCK;
            if (d4 < D4) {
                var a0 = scale_columns(acc[2u * g], rescale[0]);
                var a1 = scale_columns(acc[2u * g + 1u], rescale[1]);
                for (var i = 0u; i < keys; i++) {
                    let v = v_load4(b + i, kv_col + 4u * d4);
                    a0 = accumulate(a0, probs[2u * i], v);
                    a1 = accumulate(a1, probs[2u * i + 1u], v);
                }
                acc[2u * g] = a0;
                acc[2u * g + 1u] = a1;
            }
        }
        workgroupBarrier();
    }

    for (var g = 0u; g < GROUPS; g++) {
        let d4 = lid + g * BLOCK;
        if (d4 < D4) {
            for (var quad = 0u; quad < 2u; quad++) {
                let out = transpose(acc[2u * g + quad]);
                let inv = 1.0 / running_sum[quad];
                for (var e = 0u; e < 4u; e++) {
                    tile[2u * (4u * d4 + e) + quad] = out[e] * inv;
                }
            }
        }
    }
}

fn attend_one(first: u32, lo: u32, kv_col: u32, lid: u32) {
    var acc: array<vec4<f32>, GROUPS>;
    for (var b = lo; b <= first; b += BLOCK) {
        let j = b + lid;
        var s = 0.0;
        if (j <= first) {
            for (var d4 = 0u; d4 < D4; d4++) {
                let d = 8u * d4;
                let q4 = vec4<f32>(tile[d].x, tile[d + 2u].x, tile[d + 4u].x, tile[d + 6u].x);
                s += dot(q4, k_load4(j, kv_col + 4u * d4));
            }
        }
        probs[2u * lid] = select(vec4<f32>(MASKED), vec4<f32>(s * SCALE), seen(j, first, 0u));
        probs[2u * lid + 1u] = vec4<f32>(MASKED);
        softmax_block(lid);

        let keys = min(BLOCK, first + 1u - b);
        for (var g = 0u; g < GROUPS; g++) {
            let d4 = lid + g * BLOCK;
            if (d4 < D4) {
                var a = acc[g] * rescale[0].x;
                for (var i = 0u; i < keys; i++) {
                    a += probs[2u * i].x * v_load4(b + i, kv_col + 4u * d4);
                }
                acc[g] = a;
            }
        }
        workgroupBarrier();
    }

    let inv = 1.0 / running_sum[0].x;
    for (var g = 0u; g < GROUPS; g++) {
        let d4 = lid + g * BLOCK;
        if (d4 < D4) {
            for (var e = 0u; e < 4u; e++) {
                tile[2u * (4u * d4 + e)].x = acc[g][e] * inv;
            }
        }
    }
}

// Output value d of token tt of the tile.
fn output_at(tt: u32, d: u32) -> f32 {
    return tile[2u * d + tt / 4u][tt % 4u];
}
