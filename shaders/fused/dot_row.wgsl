// y[t0 + tt] . row r of W for the tile's tokens.
fn dot_row(r: u32, t0: u32, tiles: u32) -> array<f32, TILE> {
    var acc: array<f32, TILE>;
    for (var i = 0u; i < K; i++) {
        let wv = weight(r, i);
        for (var tt = 0u; tt < tiles; tt++) {
            acc[tt] += wv * x_at(t0, tt, i);
        }
    }
    return acc;
}
