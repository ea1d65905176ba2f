// Shared by every kernel: the per-step parameters.
struct Params {
    n_tokens: u32,
    n_past: u32,
    // How many candidates the top-k kernel returns.
    k: u32,
    // The first row the logits step computes: n_tokens - 1 when the host wants only the last
    // token's logits, else 0. Only kernels built with FROM_FIRST_ROW read it.
    first_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
