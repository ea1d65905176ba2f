// Appends the step's keys and values (rows of KV_ROW values, heads of HEAD_DIM, a multiple of
// 64) to a layer's Q8_0 cache, row t in slot row_slot(t): invocation x quantizes blocks 2x and 2x + 1 of token
// t's row, which lie in one head, so the word of their two scales is its alone. A block's scale is its largest magnitude over 127 and its values round
// half away from zero, as ggml's Q8_0.
// The cache (bindings 3 and 4, u32) and its loaders come from kv/q8_0.wgsl.
@group(0) @binding(1) var<storage, read_write> k: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;

// Value i (of 64) of the pair of blocks that starts at `at`, of k (which = 0) or v.
fn source(which: u32, at: u32) -> f32 {
    if (which == 0u) {
        return k[at];
    }
    return v[at];
}

// The pair's 16 words of integers and, last, the word of its two scales.
fn quantize_pair(which: u32, at: u32) -> array<u32, 17> {
    var words: array<u32, 17>;
    var scales = 0u;
    for (var b = 0u; b < 2u; b++) {
        var amax = 0.0;
        for (var i = 0u; i < 32u; i++) {
            amax = max(amax, abs(source(which, at + 32u * b + i)));
        }
        let d = amax / 127.0;
        let id = select(0.0, 1.0 / d, d != 0.0);
        // Stored rounded to f16; the integers were taken with the unrounded scale, as ggml's.
        scales |= f32_to_half(d) << (16u * b);
        for (var i = 0u; i < 32u; i++) {
            let r = source(which, at + 32u * b + i) * id;
            let q = i32(trunc(r + select(-0.5, 0.5, r >= 0.0)));
            let w = 8u * b + i / 4u;
            words[w] |= (bitcast<u32>(q) & 0xffu) << (8u * (i % 4u));
        }
    }
    words[16] = scales;
    return words;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pair = gid.x;
    let t = gid.y;
    if (pair >= KV_ROW / 64u || t >= params.n_tokens) {
        return;
    }
    let col = 64u * pair;
    let row = kv_row_word(row_slot(t), col);
    let d = col % HEAD_DIM;
    let at = t * KV_ROW + col;
    let kw = quantize_pair(0u, at);
    let vw = quantize_pair(1u, at);
    for (var w = 0u; w < 16u; w++) {
        k_cache[row + d / 4u + w] = kw[w];
        v_cache[row + d / 4u + w] = vw[w];
    }
    k_cache[row + HEAD_DIM / 4u + d / 64u] = kw[16];
    v_cache[row + HEAD_DIM / 4u + d / 64u] = vw[16];
}
