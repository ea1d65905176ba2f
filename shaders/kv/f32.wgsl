// The KV cache as f32. A region holds each KV head's KV_CTX rows of HEAD_DIM values in turn;
// `col` is a value's column in a token's row of all heads (head * HEAD_DIM + dimension).
fn kv_index(j: u32, col: u32) -> u32 {
    return ((col / HEAD_DIM) * KV_CTX + j) * HEAD_DIM + col % HEAD_DIM;
}

// Four values from `col` (a multiple of 4) of position j.
fn k_load4(j: u32, col: u32) -> vec4<f32> {
    let at = kv_index(j, col);
    return vec4<f32>(k_cache[at], k_cache[at + 1u], k_cache[at + 2u], k_cache[at + 3u]);
}

fn v_load4(j: u32, col: u32) -> vec4<f32> {
    let at = kv_index(j, col);
    return vec4<f32>(v_cache[at], v_cache[at + 1u], v_cache[at + 2u], v_cache[at + 3u]);
}

// Values `col` (even) and `col + 1` of position j.
fn k_store2(j: u32, col: u32, a: f32, b: f32) {
    let at = kv_index(j, col);
    k_cache[at] = a;
    k_cache[at + 1u] = b;
}

fn v_store2(j: u32, col: u32, a: f32, b: f32) {
    let at = kv_index(j, col);
    v_cache[at] = a;
    v_cache[at + 1u] = b;
}
