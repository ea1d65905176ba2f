// Shared by every kernel: the per-step parameters. MAX_ROWS (the plan's batch) and PAGE_TOKENS
// come with every kernel.
struct Params {
    n_tokens: u32,
    // The sequences in the step.
    n_seqs: u32,
    // How many candidates the top-k kernel returns.
    k: u32,
    // The first row the logits step computes: n_tokens - 1 when the host wants only the last
    // token's logits, else 0. Only kernels built with FROM_FIRST_ROW read it.
    first_row: u32,
    // Per row of the step: its position in its sequence, the cache slot its keys and values go
    // to, and where its sequence's page table starts in the attention kernels' `pages`.
    rows: array<vec4<u32>, MAX_ROWS>,
}

@group(0) @binding(0) var<uniform> params: Params;

fn row_pos(t: u32) -> u32 {
    return params.rows[t].x;
}

fn row_slot(t: u32) -> u32 {
    return params.rows[t].y;
}

fn row_table(t: u32) -> u32 {
    return params.rows[t].z;
}
