// Rotary position embedding on rows of N_HEAD heads of HEAD_DIM; the first N_ROT dimensions of each
// head rotate in pairs (2i, 2i+1), or (i, i + N_ROT/2) when NEOX. Row t is at position row_pos(t).
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    let t = gid.y;
    if (e >= N_HEAD * HEAD_DIM || t >= params.n_tokens) {
        return;
    }
    let row = t * N_HEAD * HEAD_DIM;
    let head = row + (e / HEAD_DIM) * HEAD_DIM;
    let d = e % HEAD_DIM;
    if (d >= N_ROT) {
        y[row + e] = x[row + e];
        return;
    }
    let half = N_ROT / 2u;
    var i: u32;
    var first: bool;
    var partner: u32;
    if (NEOX) {
        i = d % half;
        first = d < half;
        partner = select(d - half, d + half, first);
    } else {
        i = d / 2u;
        first = (d % 2u) == 0u;
        partner = d ^ 1u;
    }
    let theta = rope_theta(row_pos(t), i);
    let c = cos(theta);
    let s = sin(theta);
    let v = x[head + d];
    let p = x[head + partner];
    if (first) {
        y[head + d] = v * c - p * s;
    } else {
        y[head + d] = p * s + v * c;
    }
}
