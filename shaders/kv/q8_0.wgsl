// The KV cache as Q8_0: row j is KV_ROW signed bytes (four to a word, the first in the lowest
// bits), then one f16 scale per block of 32 values (two to a word). Stored only by
// kv_store_q8_0.wgsl, which quantizes whole blocks.
const KV_ROW_WORDS: u32 = KV_ROW / 4u + KV_ROW / 64u;

fn q8_0_value4(q: u32, scales: u32, col: u32) -> vec4<f32> {
    let b = col / 32u;
    let d = half_to_f32((scales >> (16u * (b % 2u))) & 0xffffu);
    let s = bitcast<i32>(q);
    return vec4<f32>(
        f32(extractBits(s, 0u, 8u)),
        f32(extractBits(s, 8u, 8u)),
        f32(extractBits(s, 16u, 8u)),
        f32(extractBits(s, 24u, 8u)),
    ) * d;
}

fn k_load4(j: u32, col: u32) -> vec4<f32> {
    let row = j * KV_ROW_WORDS;
    return q8_0_value4(k_cache[row + col / 4u], k_cache[row + KV_ROW / 4u + col / 64u], col);
}

fn v_load4(j: u32, col: u32) -> vec4<f32> {
    let row = j * KV_ROW_WORDS;
    return q8_0_value4(v_cache[row + col / 4u], v_cache[row + KV_ROW / 4u + col / 64u], col);
}
