//! Gemma 3: pre- and post-norms around attention and FFN, RMSNorm on each query and key head,
//! GeGLU (tanh-approximated GELU), embeddings scaled by sqrt(n_embd), NEOX RoPE, and
//! interleaved attention: five sliding-window (local) layers, then one global layer.
//!
//! Where the constants come from:
//! - Norm weights: Gemma computes `x * (1 + w)`; the GGUF converter (convert_hf_to_gguf.py, Gemma3
//!   model: `norm_shift`) stores `1 + w`, so the file's weights are used as they are, as llama.cpp does.
//! - Sliding window: `gemma3.attention.sliding_window` (512 for 270M).
//! - Which layers are local: no key says; llama.cpp's gemma3 loader sets a pattern of 6 (layer l is
//!   global when l % 6 == 5), matching HF's `sliding_window_pattern = 6`.
//! - RoPE base: `gemma3.rope.freq_base` (1e6) on global layers; local layers use 10,000, which
//!   llama.cpp hard-codes for gemma3 (`rope_freq_base_train_swa`) as HF's `rope_local_base_freq`.
//! - Attention scale: 1/sqrt(head_dim) with head_dim = `gemma3.attention.key_length` (256), HF's
//!   `query_pre_attn_scalar` for the small Gemma 3 models.
//! - Embedding scale: sqrt(`gemma3.embedding_length`), as HF's `embed_scale`.

use crate::ir::{Graph, Op, UnaryOp};
use crate::lower::{AttentionConfig, Builder, Hparams, LowerError, Meta};

const GLOBAL_EVERY: u64 = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

pub fn lower(meta: &Meta) -> Result<(Graph, Hparams), LowerError> {
    let window = meta.u64("attention.sliding_window")?;
    let mut b = Builder::new(meta)?;
    let hp = b.hp.clone();
    let d = hp.n_embd;
    let (table, x) = b.embed()?;
    let mut x = b.g.add("embed_scaled", Op::Scale((d as f32).sqrt()), &[x]);
    for l in 0..hp.n_layer {
        let global = l % GLOBAL_EVERY == GLOBAL_EVERY - 1;
        let attention = AttentionConfig {
            rope_base: if global {
                hp.rope_base
            } else {
                LOCAL_ROPE_BASE
            },
            neox: true,
            window: (!global).then_some(window as u32),
            scale: 1.0 / (hp.head_dim as f32).sqrt(),
            qk_norm: true,
        };
        let h = b.rms_norm(x, &format!("blk.{l}.attn_norm"), d)?;
        let a = b.attention(h, l, attention)?;
        let a = b.rms_norm(a, &format!("blk.{l}.post_attention_norm"), d)?;
        x = b.add(format!("blk.{l}.attn_residual"), x, a);
        let h = b.rms_norm(x, &format!("blk.{l}.ffn_norm"), d)?;
        let f = b.gated_ffn(h, l, UnaryOp::GeluTanh)?;
        let f = b.rms_norm(f, &format!("blk.{l}.post_ffw_norm"), d)?;
        x = b.add(format!("blk.{l}.ffn_residual"), x, f);
    }
    b.finish(x, table)
}
