// y[t][N0 + j] = sum_i W[j][i] x[t][i] for the NP rows of W bound as `wq` (W is split across
// bindings when it is larger than one binding may be). Constants: K, N (row length of y), N0, NP,
// ROW_BYTES, FROM_FIRST_ROW (start at params.first_row: the logits step). Activations stay f32:
// each invocation owns one row of W and TILE tokens, so every weight is decoded once per TILE
// tokens.
const TILE: u32 = 8u;

@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let t0 = select(0u, params.first_row, FROM_FIRST_ROW) + gid.y * TILE;
    if (j >= NP || t0 >= params.n_tokens) {
        return;
    }
    let tiles = min(TILE, params.n_tokens - t0);
    var acc: array<f32, TILE>;
    for (var i = 0u; i < K; i++) {
        let wv = weight(j, i);
        for (var tt = 0u; tt < tiles; tt++) {
            acc[tt] += wv * x[(t0 + tt) * K + i];
        }
    }
    for (var tt = 0u; tt < tiles; tt++) {
        y[(t0 + tt) * N + N0 + j] = acc[tt];
    }
}
