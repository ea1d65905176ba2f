// No per-head norm: q and k heads rotate as the product made them.
fn head_norm(lid: u32, head: u32, live: bool, values: ptr<function, array<array<vec2<f32>, TILE>, 2>>,
             dims: array<vec2<u32>, 2>) {}
