//! Small synthetic models written as GGUF, so tests can compile and run a whole model without
//! downloading one. Values are deterministic and well-conditioned (no overflow in any layer).

use crate::gguf::writer::GgufWriter;
use crate::gguf::{Array, Value};

/// Shape of a synthetic llama-family model.
#[derive(Clone, Copy, Debug)]
pub struct TinyLlama {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_ctx: u64,
    /// Write a separate `output.weight` instead of tying the head to `token_embd`.
    pub untied_head: bool,
    /// Add Q/K/V biases (as Qwen2 does).
    pub qkv_bias: bool,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            n_layer: 2,
            n_embd: 16,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 24,
            n_vocab: 40,
            n_ctx: 64,
            untied_head: false,
            qkv_bias: false,
        }
    }
}

/// Deterministic values in [-scale, scale).
fn values(seed: u64, n: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

impl TinyLlama {
    pub fn to_gguf(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        let s = |v: &str| Value::String(v.into());
        w.metadata("general.architecture", s("llama"))
            .metadata("general.name", s("tiny synthetic llama"))
            .metadata("llama.block_count", Value::U32(self.n_layer as u32))
            .metadata("llama.context_length", Value::U32(self.n_ctx as u32))
            .metadata("llama.embedding_length", Value::U32(self.n_embd as u32))
            .metadata("llama.feed_forward_length", Value::U32(self.n_ff as u32))
            .metadata("llama.attention.head_count", Value::U32(self.n_head as u32))
            .metadata(
                "llama.attention.head_count_kv",
                Value::U32(self.n_head_kv as u32),
            )
            .metadata("llama.rope.freq_base", Value::F32(10000.0))
            .metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        self.tokenizer(&mut w);
        let (d, ff, v) = (self.n_embd, self.n_ff, self.n_vocab);
        let hd = d / self.n_head;
        let kv = self.n_head_kv * hd;
        let mut seed = 1;
        let mut tensor = |w: &mut GgufWriter, name: &str, dims: &[u64], scale: f32| {
            seed += 1;
            w.tensor_f32(name, dims, &values(seed, dims.iter().product(), scale));
        };
        tensor(&mut w, "token_embd.weight", &[d, v], 1.0);
        let proj = 1.0 / (d as f32).sqrt();
        for l in 0..self.n_layer {
            let p = format!("blk.{l}");
            w.tensor_f32(
                &format!("{p}.attn_norm.weight"),
                &[d],
                &values(100 + l, d, 0.2)
                    .iter()
                    .map(|x| 1.0 + x)
                    .collect::<Vec<_>>(),
            );
            tensor(&mut w, &format!("{p}.attn_q.weight"), &[d, d], proj);
            tensor(&mut w, &format!("{p}.attn_k.weight"), &[d, kv], proj);
            tensor(&mut w, &format!("{p}.attn_v.weight"), &[d, kv], proj);
            if self.qkv_bias {
                tensor(&mut w, &format!("{p}.attn_q.bias"), &[d], 0.1);
                tensor(&mut w, &format!("{p}.attn_k.bias"), &[kv], 0.1);
                tensor(&mut w, &format!("{p}.attn_v.bias"), &[kv], 0.1);
            }
            tensor(&mut w, &format!("{p}.attn_output.weight"), &[d, d], proj);
            w.tensor_f32(
                &format!("{p}.ffn_norm.weight"),
                &[d],
                &values(200 + l, d, 0.2)
                    .iter()
                    .map(|x| 1.0 + x)
                    .collect::<Vec<_>>(),
            );
            tensor(&mut w, &format!("{p}.ffn_gate.weight"), &[d, ff], proj);
            tensor(&mut w, &format!("{p}.ffn_up.weight"), &[d, ff], proj);
            tensor(
                &mut w,
                &format!("{p}.ffn_down.weight"),
                &[ff, d],
                1.0 / (ff as f32).sqrt(),
            );
        }
        w.tensor_f32("output_norm.weight", &[d], &vec![1.0; d as usize]);
        if self.untied_head {
            tensor(&mut w, "output.weight", &[d, v], 1.0);
        }
        w.to_bytes()
    }

    /// A byte-level BPE vocabulary of single characters (and no merges), so prompts can be any
    /// ASCII text made of them.
    fn tokenizer(&self, w: &mut GgufWriter) {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into()];
        tokens.extend((0..self.n_vocab - 1).map(|i| {
            char::from(b'a' + (i % 26) as u8).to_string() + &"x".repeat((i / 26) as usize)
        }));
        let types = vec![3i32]
            .into_iter()
            .chain(std::iter::repeat_n(1, tokens.len() - 1))
            .collect();
        w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
            .metadata("tokenizer.ggml.pre", Value::String("gpt-2".into()))
            .metadata("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
            .metadata("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
            .metadata("tokenizer.ggml.merges", Value::Array(Array::String(vec![])))
            .metadata("tokenizer.ggml.bos_token_id", Value::U32(0))
            .metadata("tokenizer.ggml.eos_token_id", Value::U32(0))
            .metadata("tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
}
