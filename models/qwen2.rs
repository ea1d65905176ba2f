//! Qwen2 / Qwen2.5: the llama block with biases on the Q, K and V projections (picked up from the
//! file by `Builder::projection`), NEOX-style RoPE (llama.cpp maps LLM_ARCH_QWEN2 to
//! LLAMA_ROPE_TYPE_NEOX), and usually a separate `output.weight`. The rope base (1e6 for
//! Qwen2.5) comes from `qwen2.rope.freq_base`.

use crate::ir::Graph;
use crate::lower::{Hparams, LowerError, Meta};

pub fn lower(meta: &Meta) -> Result<(Graph, Hparams), LowerError> {
    super::llama::lower_decoder(meta, true)
}
