// The KV cache as f32: row j holds KV_ROW values. `col` is a value's column in its row.
fn k_load4(j: u32, col: u32) -> vec4<f32> {
    let at = j * KV_ROW + col;
    return vec4<f32>(k_cache[at], k_cache[at + 1u], k_cache[at + 2u], k_cache[at + 3u]);
}

fn v_load4(j: u32, col: u32) -> vec4<f32> {
    let at = j * KV_ROW + col;
    return vec4<f32>(v_cache[at], v_cache[at + 1u], v_cache[at + 2u], v_cache[at + 3u]);
}

// Values `col` (even) and `col + 1` of row j.
fn k_store2(j: u32, col: u32, a: f32, b: f32) {
    let at = j * KV_ROW + col;
    k_cache[at] = a;
    k_cache[at + 1u] = b;
}

fn v_store2(j: u32, col: u32, a: f32, b: f32) {
    let at = j * KV_ROW + col;
    v_cache[at] = a;
    v_cache[at + 1u] = b;
}
