// The KV cache as f16, two values to a word (the lower half first, as the CPU stores them). A
// region holds each KV head's KV_CTX rows of HEAD_DIM values in turn; `col` is a value's column
// in a token's row of all heads (head * HEAD_DIM + dimension).
fn kv_index(j: u32, col: u32) -> u32 {
    return ((col / HEAD_DIM) * KV_CTX + j) * HEAD_DIM + col % HEAD_DIM;
}

fn halves(w: u32) -> vec2<f32> {
    return vec2<f32>(half_to_f32(w & 0xffffu), half_to_f32(w >> 16u));
}

// Four values from `col` (a multiple of 4) of position j.
fn k_load4(j: u32, col: u32) -> vec4<f32> {
    let w = kv_index(j, col) / 2u;
    return vec4<f32>(halves(k_cache[w]), halves(k_cache[w + 1u]));
}

fn v_load4(j: u32, col: u32) -> vec4<f32> {
    let w = kv_index(j, col) / 2u;
    return vec4<f32>(halves(v_cache[w]), halves(v_cache[w + 1u]));
}

// Values `col` (even) and `col + 1` of position j: one word, so no other invocation shares it.
fn k_store2(j: u32, col: u32, a: f32, b: f32) {
    k_cache[kv_index(j, col) / 2u] = f32_to_half(a) | (f32_to_half(b) << 16u);
}

fn v_store2(j: u32, col: u32, a: f32, b: f32) {
    v_cache[kv_index(j, col) / 2u] = f32_to_half(a) | (f32_to_half(b) << 16u);
}
