// Shared by every kernel: the per-step parameters.
struct Params {
    n_tokens: u32,
    n_past: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
