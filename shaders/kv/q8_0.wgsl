// The KV cache as Q8_0. A region holds each KV head's KV_CTX rows in turn; a row is HEAD_DIM
// signed bytes (four to a word, the first in the lowest bits), then one f16 scale per block of
// 32 values (two to a word). `col` is a value's column in a token's row of all heads (head *
// HEAD_DIM + dimension). Stored only by kv/store_q8_0.wgsl, which quantizes whole blocks.
const KV_ROW_WORDS: u32 = HEAD_DIM / 4u + HEAD_DIM / 64u;

// The first word of head `col / HEAD_DIM`'s row for position j.
fn kv_row_word(j: u32, col: u32) -> u32 {
    return ((col / HEAD_DIM) * KV_CTX + j) * KV_ROW_WORDS;
}

fn q8_0_value4(q: u32, scales: u32, d: u32) -> vec4<f32> {
    let b = d / 32u;
    let scale = half_to_f32((scales >> (16u * (b % 2u))) & 0xffffu);
    let s = bitcast<i32>(q);
    return vec4<f32>(
        f32(extractBits(s, 0u, 8u)),
        f32(extractBits(s, 8u, 8u)),
        f32(extractBits(s, 16u, 8u)),
        f32(extractBits(s, 24u, 8u)),
    ) * scale;
}

// Four values from `col` (a multiple of 4) of position j.
fn k_load4(j: u32, col: u32) -> vec4<f32> {
    let row = kv_row_word(j, col);
    let d = col % HEAD_DIM;
    return q8_0_value4(k_cache[row + d / 4u], k_cache[row + HEAD_DIM / 4u + d / 64u], d);
}

fn v_load4(j: u32, col: u32) -> vec4<f32> {
    let row = kv_row_word(j, col);
    let d = col % HEAD_DIM;
    return q8_0_value4(v_cache[row + d / 4u], v_cache[row + HEAD_DIM / 4u + d / 64u], d);
}
