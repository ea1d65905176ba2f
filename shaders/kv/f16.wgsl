// The KV cache as f16, two values to a word (the lower half first, as the CPU stores them):
// row j holds KV_ROW values. `col` is a value's column in its row.
fn halves(w: u32) -> vec2<f32> {
    return vec2<f32>(half_to_f32(w & 0xffffu), half_to_f32(w >> 16u));
}

fn k_load4(j: u32, col: u32) -> vec4<f32> {
    let w = (j * KV_ROW + col) / 2u;
    return vec4<f32>(halves(k_cache[w]), halves(k_cache[w + 1u]));
}

fn v_load4(j: u32, col: u32) -> vec4<f32> {
    let w = (j * KV_ROW + col) / 2u;
    return vec4<f32>(halves(v_cache[w]), halves(v_cache[w + 1u]));
}

// Values `col` (even) and `col + 1` of row j: one word, so no other invocation shares it.
fn k_store2(j: u32, col: u32, a: f32, b: f32) {
    k_cache[(j * KV_ROW + col) / 2u] = f32_to_half(a) | (f32_to_half(b) << 16u);
}

fn v_store2(j: u32, col: u32, a: f32, b: f32) {
    v_cache[(j * KV_ROW + col) / 2u] = f32_to_half(a) | (f32_to_half(b) << 16u);
}
