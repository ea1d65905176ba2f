// Causal attention of one query head over the layer's cache for a tile of up to TILE (= 8)
// consecutive tokens, by one workgroup of 64 invocations, flash-attention style: the keys are split
// into blocks of 64, one key per invocation, and a running maximum and sum per token rescale the
// output as each block arrives (online softmax), so no score leaves the workgroup. In a tile of
// several tokens every key and value row read from the cache serves all of them, the tokens held as
// two quads (vec4) of lanes; a single token (decode) takes its own path that computes one lane.
// Dimensions go four at a time, which also keeps every loop short: lavapipe stops a shader after
// 65535 loop iterations in all, and a block costs about 200 of them here.
// A tile's rows may belong to different sequences: a tile within one sequence (consecutive
// positions) shares its key rows; otherwise each token attends on its own. Positions reach the
// cache through the sequence's page table (`pages`, declared by the variant).
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

// The cache slot of position j of the sequence whose page table starts at `table`.
fn slot_of(table: u32, j: u32) -> u32 {
    return pages[table + j / PAGE_TOKENS] * PAGE_TOKENS + j % PAGE_TOKENS;
}

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
    let kv_col = (h / (N_HEAD / N_KV_HEAD)) * HEAD_DIM;
    // Uniform: the rows' metadata comes from the uniform parameters.
    let first = row_pos(t0);
    let table = row_table(t0);
    let one_sequence = row_table(t0 + tiles - 1u) == table
        && row_pos(t0 + tiles - 1u) == first + tiles - 1u;
    workgroupBarrier();
    if (tiles == 1u) {
        attend_one(0u, first, table, kv_col, lid);
    } else if (one_sequence) {
        // The keys any token of the tile sees: from the first token's window start to the last.
        attend_tile(first, first + tiles - 1u, window_start(first), table, kv_col, lid);
    } else {
        for (var tt = 0u; tt < tiles; tt++) {
            attend_one(tt, row_pos(t0 + tt), row_table(t0 + tt), kv_col, lid);
        }
    }
    workgroupBarrier();
}

// The first position a token at `pos` sees.
fn window_start(pos: u32) -> u32 {
    if (WINDOW > 0u && pos + 1u > WINDOW) {
        return pos + 1u - WINDOW;
    }
    return 0u;
}

fn attend_tile(first: u32, last: u32, lo: u32, table: u32, kv_col: u32, lid: u32) {
    var acc: array<mat4x4<f32>, 2u * GROUPS>;
    for (var b = lo; b <= last; b += BLOCK) {
        let j = b + lid;
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        if (j <= last) {
            for (var d4 = 0u; d4 < D4; d4++) {
                let k = k_load4(slot_of(table, j), kv_col + 4u * d4);
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
                    let v = v_load4(slot_of(table, b + i), kv_col + 4u * d4);
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

// Token tt of the tile alone (lane tt % 4 of quad tt / 4), at position `pos` of the sequence
// whose page table starts at `table`.
fn attend_one(tt: u32, pos: u32, table: u32, kv_col: u32, lid: u32) {
    let quad = tt / 4u;
    let lane = tt % 4u;
    if (lid == 0u) {
        running_max[quad][lane] = MASKED;
        running_sum[quad][lane] = 0.0;
    }
    workgroupBarrier();
    let lo = window_start(pos);
    var acc: array<vec4<f32>, GROUPS>;
    for (var b = lo; b <= pos; b += BLOCK) {
        let j = b + lid;
        var s = 0.0;
        if (j <= pos) {
            for (var d4 = 0u; d4 < D4; d4++) {
                let d = 8u * d4 + quad;
                let q4 = vec4<f32>(tile[d][lane], tile[d + 2u][lane], tile[d + 4u][lane], tile[d + 6u][lane]);
                s += dot(q4, k_load4(slot_of(table, j), kv_col + 4u * d4));
            }
        }
        var p = vec4<f32>(MASKED);
        if (j <= pos) {
            p[lane] = s * SCALE;
        }
        probs[2u * lid + quad] = p;
        probs[2u * lid + 1u - quad] = vec4<f32>(MASKED);
        softmax_block(lid);

        let keys = min(BLOCK, pos + 1u - b);
        for (var g = 0u; g < GROUPS; g++) {
            let d4 = lid + g * BLOCK;
            if (d4 < D4) {
                var a = acc[g] * rescale[quad][lane];
                for (var i = 0u; i < keys; i++) {
                    a += probs[2u * i + quad][lane] * v_load4(slot_of(table, b + i), kv_col + 4u * d4);
                }
                acc[g] = a;
            }
        }
        workgroupBarrier();
    }

    let inv = 1.0 / running_sum[quad][lane];
    for (var g = 0u; g < GROUPS; g++) {
        let d4 = lid + g * BLOCK;
        if (d4 < D4) {
            for (var e = 0u; e < 4u; e++) {
                tile[2u * (4u * d4 + e) + quad][lane] = acc[g][e] * inv;
            }
        }
    }
    workgroupBarrier();
}

// Output value d of token tt of the tile.
fn output_at(tt: u32, d: u32) -> f32 {
    return tile[2u * d + tt / 4u][tt % 4u];
}
