// Q, K and V in one product of (N_HEAD + 2 N_KV_HEAD) HEAD_DIM rows. Work item p is a pair of
// dimensions of one head: a rotary pair (2i, 2i+1), or (i, i + N_ROT/2) when NEOX, for i below
// N_ROT / 2; a pair of unrotated dimensions above. Q heads are rotated into y; K heads rotated and
// V heads as they are go to the layer's cache at position n_past + t. `bias_at` is the bias of a
// row (0 without one).
fn epilogue(p: u32, t0: u32, tiles: u32) {
    let head = p / (HEAD_DIM / 2u);
    let i = p % (HEAD_DIM / 2u);
    let rotated = i < N_ROT / 2u && head < N_HEAD + N_KV_HEAD;
    var d1 = 2u * i;
    var d2 = 2u * i + 1u;
    if (NEOX && i < N_ROT / 2u) {
        d1 = i;
        d2 = i + N_ROT / 2u;
    }
    let r1 = head * HEAD_DIM + d1;
    let r2 = head * HEAD_DIM + d2;
    let a = dot_row(r1, t0, tiles);
    let b = dot_row(r2, t0, tiles);
    let kv_row = N_KV_HEAD * HEAD_DIM;
    for (var tt = 0u; tt < tiles; tt++) {
        let pos = params.n_past + t0 + tt;
        var v1 = a[tt] + bias_at(r1);
        var v2 = b[tt] + bias_at(r2);
        if (rotated) {
            let theta = rope_theta(pos, i);
            let c = cos(theta);
            let s = sin(theta);
            let r = v1 * c - v2 * s;
            v2 = v1 * s + v2 * c;
            v1 = r;
        }
        if (head < N_HEAD) {
            let base = (t0 + tt) * N_HEAD * HEAD_DIM + head * HEAD_DIM;
            y[base + d1] = v1;
            y[base + d2] = v2;
        } else if (head < N_HEAD + N_KV_HEAD) {
            let base = pos * kv_row + (head - N_HEAD) * HEAD_DIM;
            k_cache[base + d1] = v1;
            k_cache[base + d2] = v2;
        } else {
            let base = pos * kv_row + (head - N_HEAD - N_KV_HEAD) * HEAD_DIM;
            v_cache[base + d1] = v1;
            v_cache[base + d2] = v2;
        }
    }
}
