// Shared by every kernel: the per-step parameters.
struct Params {
    n_tokens: u32,
    n_past: u32,
    // How many candidates the top-k kernel returns.
    k: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
