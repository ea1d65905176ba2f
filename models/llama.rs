//! The llama family (Llama 2/3, SmolLM2, ...): pre-norm decoder blocks with RMSNorm, rotary
//! embeddings on adjacent pairs (llama.cpp's LLAMA_ROPE_TYPE_NORM: the GGUF converter permutes
//! Q and K for it), grouped-query attention and a SwiGLU FFN. The LM head reuses `token_embd` when
//! `output.weight` is absent (tied embeddings, as in SmolLM2).

use crate::ir::{Graph, UnaryOp};
use crate::lower::{AttentionConfig, Builder, Hparams, LowerError, Meta};

pub fn lower(meta: &Meta) -> Result<(Graph, Hparams), LowerError> {
    lower_decoder(meta, false)
}

/// The llama block, shared with families that differ only in RoPE pairing (qwen2).
pub fn lower_decoder(meta: &Meta, neox: bool) -> Result<(Graph, Hparams), LowerError> {
    let mut b = Builder::new(meta)?;
    let hp = b.hp.clone();
    let attention = AttentionConfig {
        rope_base: hp.rope_base,
        neox,
        window: None,
        scale: 1.0 / (hp.head_dim as f32).sqrt(),
        qk_norm: false,
    };
    let (table, mut x) = b.embed()?;
    for l in 0..hp.n_layer {
        let h = b.rms_norm(x, &format!("blk.{l}.attn_norm"), hp.n_embd)?;
        let a = b.attention(h, l, attention)?;
        x = b.add(format!("blk.{l}.attn_residual"), x, a);
        let h = b.rms_norm(x, &format!("blk.{l}.ffn_norm"), hp.n_embd)?;
        let f = b.gated_ffn(h, l, UnaryOp::Silu)?;
        x = b.add(format!("blk.{l}.ffn_residual"), x, f);
    }
    b.finish(x, table)
}
