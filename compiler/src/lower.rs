//! Lowering: from a GGUF file to an op graph, through the architecture's file in `models/`.

use thiserror::Error;

use crate::gguf::{GgufFile, Value};
use crate::ir::{Graph, NodeId, Op, UnaryOp, WeightData};

#[path = "../../models/gemma3.rs"]
pub mod gemma3;
#[path = "../../models/llama.rs"]
pub mod llama;
#[path = "../../models/qwen2.rs"]
pub mod qwen2;

/// Architectures the compiler lowers, by `general.architecture`.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma3"];

#[derive(Debug, Error)]
pub enum LowerError {
    #[error("unsupported architecture '{0}' (supported: {list})", list = SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    #[error("the file has no general.architecture string")]
    NoArchitecture,
    #[error("metadata key '{key}' is missing")]
    MissingKey { key: String },
    #[error("metadata key '{key}' should be {expected}, found {found}")]
    BadKey {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error(
        "tensor '{name}' has type {ty}, which the CPU kernels do not support (supported: {list})"
    )]
    TensorType {
        name: String,
        ty: &'static str,
        list: String,
    },
    #[error("hyperparameters are inconsistent: {0}")]
    Inconsistent(String),
}

/// The hyperparameters every supported family shares, read from `{arch}.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_vocab: u64,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_ctx_train: u64,
    pub rope_base: f32,
    pub n_rot: u64,
    pub rms_eps: f32,
}

/// Typed access to GGUF metadata with errors that name the key.
pub struct Meta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'a str,
}

impl<'a> Meta<'a> {
    pub fn new(file: &'a GgufFile) -> Result<Self, LowerError> {
        let arch = file.architecture().ok_or(LowerError::NoArchitecture)?;
        Ok(Meta { file, arch })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    pub fn opt_u64(&self, suffix: &str) -> Result<Option<u64>, LowerError> {
        let key = self.key(suffix);
        match self.file.get(&key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| LowerError::BadKey {
                key,
                expected: "a non-negative integer",
                found: v.describe(),
            }),
        }
    }

    pub fn u64(&self, suffix: &str) -> Result<u64, LowerError> {
        self.opt_u64(suffix)?.ok_or_else(|| LowerError::MissingKey {
            key: self.key(suffix),
        })
    }

    pub fn opt_f32(&self, suffix: &str) -> Result<Option<f32>, LowerError> {
        let key = self.key(suffix);
        match self.file.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| LowerError::BadKey {
                    key,
                    expected: "a float",
                    found: v.describe(),
                }),
        }
    }

    pub fn f32(&self, suffix: &str) -> Result<f32, LowerError> {
        self.opt_f32(suffix)?.ok_or_else(|| LowerError::MissingKey {
            key: self.key(suffix),
        })
    }

    /// The hyperparameters shared by the llama-like families. Defaults follow llama.cpp's
    /// llama_model_loader where a key is optional there (rope base 10000, rope over the whole head).
    pub fn hparams(&self) -> Result<Hparams, LowerError> {
        let n_embd = self.u64("embedding_length")?;
        let n_head = self.u64("attention.head_count")?;
        if n_head == 0 || n_embd == 0 {
            return Err(LowerError::Inconsistent(format!(
                "embedding_length {n_embd}, head_count {n_head}"
            )));
        }
        let n_head_kv = self.opt_u64("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(LowerError::Inconsistent(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match self.opt_u64("attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(LowerError::Inconsistent(format!(
                    "embedding_length {n_embd} is not a multiple of head_count {n_head} and attention.key_length is absent"
                )))
            }
        };
        let n_rot = self.opt_u64("rope.dimension_count")?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(LowerError::Inconsistent(format!(
                "rope.dimension_count {n_rot} with head dim {head_dim}"
            )));
        }
        let n_vocab = match self.opt_u64("vocab_size")? {
            Some(n) => n,
            None => match self
                .file
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
            {
                Some(tokens) => tokens.len() as u64,
                None => {
                    return Err(LowerError::MissingKey {
                        key: "tokenizer.ggml.tokens".into(),
                    })
                }
            },
        };
        Ok(Hparams {
            arch: self.arch.to_string(),
            n_vocab,
            n_embd,
            n_layer: self.u64("block_count")?,
            n_ff: self.u64("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train: self.u64("context_length")?,
            rope_base: self.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
            n_rot,
            rms_eps: self.f32("attention.layer_norm_rms_epsilon")?,
        })
    }
}

/// Adds GGUF tensor `name` as a weight node, checking its shape (ggml order).
pub fn weight(
    g: &mut Graph,
    file: &GgufFile,
    name: &str,
    expected: &[u64],
) -> Result<NodeId, LowerError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| LowerError::MissingTensor(name.into()))?;
    if t.dims != expected {
        return Err(LowerError::TensorShape {
            name: name.into(),
            found: t.dims.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(g.add(
        name.trim_end_matches(".weight"),
        Op::Weight {
            data: WeightData::Gguf(name.into()),
            ty: t.ty,
            dims: t.dims.clone(),
        },
        &[],
    ))
}

/// How a layer's attention is set up; the families differ only in these.
#[derive(Clone, Copy, Debug)]
pub struct AttentionConfig {
    pub rope_base: f32,
    /// NEOX-style RoPE (pairs i and i + n/2) instead of adjacent pairs.
    pub neox: bool,
    pub window: Option<u32>,
    pub scale: f32,
    /// RMSNorm each query and key head (`attn_q_norm` / `attn_k_norm`), before RoPE.
    pub qk_norm: bool,
}

/// Builds the pieces decoder blocks are made of, from the file's tensors.
pub struct Builder<'a> {
    pub g: Graph,
    pub file: &'a GgufFile,
    pub hp: Hparams,
}

impl<'a> Builder<'a> {
    pub fn new(meta: &Meta<'a>) -> Result<Self, LowerError> {
        Ok(Builder {
            g: Graph::new(),
            file: meta.file,
            hp: meta.hparams()?,
        })
    }

    pub fn weight(&mut self, name: &str, dims: &[u64]) -> Result<NodeId, LowerError> {
        weight(&mut self.g, self.file, name, dims)
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// Token ids, embedded: returns (the embedding table, the embedded rows).
    pub fn embed(&mut self) -> Result<(NodeId, NodeId), LowerError> {
        let ids = self.g.add("token_ids", Op::TokenIds, &[]);
        let table = self.weight("token_embd.weight", &[self.hp.n_embd, self.hp.n_vocab])?;
        Ok((
            table,
            self.g.add("embed", Op::Embed { scale: 1.0 }, &[table, ids]),
        ))
    }

    /// RMSNorm of `x` with weight `{tensor}.weight` of `n` values (over the last dimension).
    pub fn rms_norm(&mut self, x: NodeId, tensor: &str, n: u64) -> Result<NodeId, LowerError> {
        let w = self.weight(&format!("{tensor}.weight"), &[n])?;
        Ok(self.g.add(
            tensor,
            Op::RmsNorm {
                eps: self.hp.rms_eps,
            },
            &[x, w],
        ))
    }

    /// `x W` (+ bias when the file has `{tensor}.bias`).
    pub fn projection(
        &mut self,
        x: NodeId,
        tensor: &str,
        k: u64,
        n: u64,
    ) -> Result<NodeId, LowerError> {
        let w = self.weight(&format!("{tensor}.weight"), &[k, n])?;
        let y = self.g.add(tensor, Op::MatMul, &[x, w]);
        if !self.has(&format!("{tensor}.bias")) {
            return Ok(y);
        }
        let b = self.weight(&format!("{tensor}.bias"), &[n])?;
        Ok(self.g.add(format!("{tensor}_bias"), Op::Add, &[y, b]))
    }

    /// Self-attention of layer `l` on normalized input `h`, through the output projection.
    pub fn attention(
        &mut self,
        h: NodeId,
        l: u64,
        cfg: AttentionConfig,
    ) -> Result<NodeId, LowerError> {
        let p = format!("blk.{l}");
        let hp = self.hp.clone();
        let (d, hd) = (hp.n_embd, hp.head_dim);
        let (q_dim, kv_dim) = (hp.n_head * hd, hp.n_head_kv * hd);
        let q = self.projection(h, &format!("{p}.attn_q"), d, q_dim)?;
        let k = self.projection(h, &format!("{p}.attn_k"), d, kv_dim)?;
        let v = self.projection(h, &format!("{p}.attn_v"), d, kv_dim)?;
        let mut q = self.g.add(
            format!("{p}.q_heads"),
            Op::Reshape(vec![hp.n_head, hd]),
            &[q],
        );
        let mut k = self.g.add(
            format!("{p}.k_heads"),
            Op::Reshape(vec![hp.n_head_kv, hd]),
            &[k],
        );
        let v = self.g.add(
            format!("{p}.v_heads"),
            Op::Reshape(vec![hp.n_head_kv, hd]),
            &[v],
        );
        if cfg.qk_norm {
            q = self.rms_norm(q, &format!("{p}.attn_q_norm"), hd)?;
            k = self.rms_norm(k, &format!("{p}.attn_k_norm"), hd)?;
        }
        let rope = Op::Rope {
            n_rot: hp.n_rot as u32,
            base: cfg.rope_base,
            neox: cfg.neox,
        };
        let q = self.g.add(format!("{p}.q_rope"), rope.clone(), &[q]);
        let k = self.g.add(format!("{p}.k_rope"), rope, &[k]);
        let attn = Op::Attention {
            layer: l as u32,
            scale: cfg.scale,
            window: cfg.window,
        };
        let a = self.g.add(format!("{p}.attention"), attn, &[q, k, v]);
        let a = self
            .g
            .add(format!("{p}.attn_flat"), Op::Reshape(vec![q_dim]), &[a]);
        self.projection(a, &format!("{p}.attn_output"), q_dim, d)
    }

    /// The gated FFN of layer `l`: `down(act(gate(h)) * up(h))`.
    pub fn gated_ffn(&mut self, h: NodeId, l: u64, act: UnaryOp) -> Result<NodeId, LowerError> {
        let p = format!("blk.{l}");
        let (d, ff) = (self.hp.n_embd, self.hp.n_ff);
        let gate = self.projection(h, &format!("{p}.ffn_gate"), d, ff)?;
        let up = self.projection(h, &format!("{p}.ffn_up"), d, ff)?;
        let name = match act {
            UnaryOp::Silu => "silu",
            UnaryOp::GeluTanh => "gelu",
        };
        let gate = self
            .g
            .add(format!("{p}.ffn_{name}"), Op::Unary(act), &[gate]);
        let m = self.g.add(format!("{p}.ffn_glu"), Op::Mul, &[gate, up]);
        self.projection(m, &format!("{p}.ffn_down"), ff, d)
    }

    pub fn add(&mut self, name: String, a: NodeId, b: NodeId) -> NodeId {
        self.g.add(name, Op::Add, &[a, b])
    }

    /// Final norm and LM head (`output.weight`, or the embedding table when the head is tied).
    pub fn finish(mut self, x: NodeId, table: NodeId) -> Result<(Graph, Hparams), LowerError> {
        let x = self.rms_norm(x, "output_norm", self.hp.n_embd)?;
        let head = if self.has("output.weight") {
            self.weight("output.weight", &[self.hp.n_embd, self.hp.n_vocab])?
        } else {
            table
        };
        let logits = self.g.add("logits", Op::MatMul, &[x, head]);
        self.g.outputs.push(logits);
        Ok((self.g, self.hp))
    }
}

/// Lowers the file's architecture into a graph whose single output is the logits `[T, n_vocab]`.
pub fn lower(file: &GgufFile) -> Result<(Graph, Hparams), LowerError> {
    let meta = Meta::new(file)?;
    match meta.arch {
        "llama" => llama::lower(&meta),
        "qwen2" => qwen2::lower(&meta),
        "gemma3" => gemma3::lower(&meta),
        other => Err(LowerError::UnsupportedArchitecture(other.into())),
    }
}
