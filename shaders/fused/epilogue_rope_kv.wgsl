// Q, K and V in one product of (N_HEAD + 2 N_KV_HEAD) HEAD_DIM rows. Work item p is two
// neighbouring pairs of dimensions of one head, i = 2m and 2m + 1: a rotary pair is (2i, 2i+1),
// or (i, i + N_ROT/2) when NEOX, for i below N_ROT / 2 (a multiple of 4, so both pairs rotate or
// neither); unrotated pairs above are (2i, 2i+1). Either way the item's K and V values fall in
// whole neighbouring pairs, which `k_store2` / `v_store2` (kv/*.wgsl) store without sharing a
// word with another item. Q and K heads go through `head_norm` (fused/head_norm*.wgsl) before
// they rotate. Q heads are rotated into y; K heads rotated and V heads as they are go to the
// layer's cache in slot row_slot(t). `bias_at` is the bias of a row (0 without one).
fn epilogue(p: u32, t0: u32, tiles: u32, lid: u32) {
    let live = p < ITEMS;
    let head = p / (HEAD_DIM / 4u);
    let m = p % (HEAD_DIM / 4u);
    var dims: array<vec2<u32>, 2>;
    var values: array<array<vec2<f32>, TILE>, 2>;
    for (var s = 0u; s < 2u; s++) {
        let i = 2u * m + s;
        var d = vec2<u32>(2u * i, 2u * i + 1u);
        if (NEOX && i < N_ROT / 2u) {
            d = vec2<u32>(i, i + N_ROT / 2u);
        }
        dims[s] = d;
        if (live) {
            let r1 = head * HEAD_DIM + d.x;
            let r2 = head * HEAD_DIM + d.y;
            let a = dot_row(r1, t0, tiles);
            let b = dot_row(r2, t0, tiles);
            for (var tt = 0u; tt < tiles; tt++) {
                values[s][tt] = vec2<f32>(a[tt] + bias_at(r1), b[tt] + bias_at(r2));
            }
        }
    }
    head_norm(lid, head, live, &values, dims);
    if (!live) {
        return;
    }
    for (var s = 0u; s < 2u; s++) {
        let i = 2u * m + s;
        if (i < N_ROT / 2u && head < N_HEAD + N_KV_HEAD) {
            for (var tt = 0u; tt < tiles; tt++) {
                let theta = rope_theta(row_pos(t0 + tt), i);
                let c = cos(theta);
                let sn = sin(theta);
                let v = values[s][tt];
                values[s][tt] = vec2<f32>(v.x * c - v.y * sn, v.x * sn + v.y * c);
            }
        }
    }
    // NEOX rotary pairs hold dimensions (i, i + N_ROT/2): the neighbours are across the two.
    let across = NEOX && 2u * m < N_ROT / 2u;
    for (var tt = 0u; tt < tiles; tt++) {
        let slot = row_slot(t0 + tt);
        let a = values[0][tt];
        let b = values[1][tt];
        // Two neighbouring pairs (col, value, value) to store.
        var col = vec2<u32>(dims[0].x, dims[1].x);
        var lo = a;
        var hi = b;
        if (across) {
            col = vec2<u32>(dims[0].x, dims[0].y);
            lo = vec2<f32>(a.x, b.x);
            hi = vec2<f32>(a.y, b.y);
        }
        if (head < N_HEAD) {
            let base = (t0 + tt) * N_HEAD * HEAD_DIM + head * HEAD_DIM;
            y[base + col.x] = lo.x;
            y[base + col.x + 1u] = lo.y;
            y[base + col.y] = hi.x;
            y[base + col.y + 1u] = hi.y;
        } else if (head < N_HEAD + N_KV_HEAD) {
            let c = (head - N_HEAD) * HEAD_DIM;
            k_store2(slot, c + col.x, lo.x, lo.y);
            k_store2(slot, c + col.y, hi.x, hi.y);
        } else {
            let c = (head - N_HEAD - N_KV_HEAD) * HEAD_DIM;
            v_store2(slot, c + col.x, lo.x, lo.y);
            v_store2(slot, c + col.y, hi.x, hi.y);
        }
    }
}
