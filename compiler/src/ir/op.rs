//! The closed op set every architecture lowers into.

use super::WeightData;
use llamart::GgmlType;

pub use llamart::plan::{Epilogue, Partials, PartialsInto, UnaryOp};

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The token ids of the step: i32[T].
    TokenIds,
    /// A weight tensor; `dims` in ggml order (`dims[0]` contiguous).
    Weight {
        data: WeightData,
        ty: GgmlType,
        dims: Vec<u64>,
    },
    /// Rows of a table `[n, vocab]` picked by token ids, times `scale` (1 unless a pass folded
    /// a scale in). Operands: table, ids.
    Embed {
        scale: f32,
    },
    /// `x / sqrt(mean(x^2) + eps) * w` over the last dimension. Operands: x, w.
    RmsNorm {
        eps: f32,
    },
    /// `x W` for a weight W `[k, n]` (ggml order). Operands: x `[T, k]`, W.
    MatMul,
    /// Elementwise; the second operand may be a one-row weight broadcast over tokens.
    Add,
    Mul,
    /// Adds a constant (constant folding turns `w + c` on weights into a new weight).
    AddScalar(f32),
    Scale(f32),
    Unary(UnaryOp),
    /// The input a fused product with a post-norm prologue formed (`x + rmsnorm(y) * w`), which
    /// that product stores as it forms it, for the later ops that need the sum whole. Operand:
    /// the fused product. It computes nothing of its own.
    FormedInput,
    /// Reinterprets the operand with a new shape of the same per-token size (no data movement).
    Reshape(Vec<u64>),
    /// Rotary position embedding on `[T, heads, head_dim]`, positions counted from the cache.
    Rope {
        n_rot: u32,
        base: f32,
        neox: bool,
    },
    /// Causal attention over the layer's KV cache after appending k and v. Operands: q
    /// `[T, H, hd]`, k `[T, Hkv, hd]`, v `[T, Hkv, hd]`; or q alone, a view of a fused product
    /// whose [`Epilogue::RopeKv`] has stored k and v in the cache.
    Attention {
        layer: u32,
        scale: f32,
        window: Option<u32>,
    },
    /// Attention over the cache (q alone, as above) and then each head's share of the output
    /// projection: `[T, heads * n]`, whose parts sum to the projection. Operands: q, W_o.
    AttentionProject {
        layer: u32,
        scale: f32,
        window: Option<u32>,
    },
    /// The matrix-product archetype after fusion: `x' W` with a prologue that forms x' and an
    /// epilogue. x' is x, or x plus per-head parts (`partials` into the input), or with
    /// `post_norm` (eps) `x + rmsnorm(y) * w_post`, y an operand or the parts' sum; then through
    /// RMSNorm with `norm` (eps). W is `weights` weights `[k, n_i]` stacked by rows, each in its
    /// own type. Operands in the order of `llamart::plan::FusedInputs`: x `[T, k]`, the weights,
    /// y and w_post, the norm weight, the epilogue's operand (the residual for `Add`, the bias for
    /// `RopeKv { bias }`), the q and k head-norm weights, the parts (an `AttentionProject`).
    FusedMatMul {
        weights: u32,
        post_norm: Option<f32>,
        norm: Option<f32>,
        epilogue: Epilogue,
        partials: Option<Partials>,
    },
}

impl Op {
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::TokenIds => "token_ids",
            Op::Weight { .. } => "weight",
            Op::Embed { .. } => "embed",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul => "matmul",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::AddScalar(_) => "add_scalar",
            Op::Scale(_) => "scale",
            Op::Unary(UnaryOp::Silu) => "silu",
            Op::Unary(UnaryOp::GeluTanh) => "gelu_tanh",
            Op::Reshape(_) => "reshape",
            Op::FormedInput => "formed_input",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::FusedMatMul { .. } => "fused_matmul",
            Op::AttentionProject { .. } => "attention_project",
        }
    }

    /// Attributes worth showing in a listing, as text.
    pub fn attributes(&self) -> String {
        match self {
            Op::Weight { data, .. } => match data {
                WeightData::Gguf(name) => format!("gguf:{name}"),
                WeightData::Computed(_) => "computed".into(),
                WeightData::Concat(parts) => {
                    let names: Vec<String> = parts
                        .iter()
                        .map(|p| match p {
                            WeightData::Gguf(name) => name.clone(),
                            WeightData::Computed(_) => "computed".into(),
                            WeightData::Concat(_) => "concat".into(),
                        })
                        .collect();
                    format!("concat:{}", names.join("+"))
                }
            },
            Op::RmsNorm { eps } => format!("eps={eps:e}"),
            Op::Embed { scale } if *scale != 1.0 => format!("scale={scale}"),
            Op::AddScalar(c) | Op::Scale(c) => format!("{c}"),
            Op::Reshape(dims) => format!("{dims:?}"),
            Op::Rope { n_rot, base, neox } => format!(
                "n_rot={n_rot} base={base} {}",
                if *neox { "neox" } else { "normal" }
            ),
            Op::Attention {
                layer,
                scale,
                window,
            }
            | Op::AttentionProject {
                layer,
                scale,
                window,
            } => match window {
                Some(w) => format!("layer={layer} scale={scale} window={w}"),
                None => format!("layer={layer} scale={scale}"),
            },
            Op::FusedMatMul {
                weights,
                post_norm,
                norm,
                epilogue,
                partials,
            } => {
                let epilogue = match epilogue {
                    Epilogue::Store => "store".into(),
                    Epilogue::Add => "add".into(),
                    Epilogue::Glu(op) => format!("glu({})", Op::Unary(*op).mnemonic()),
                    Epilogue::RopeKv {
                        layer,
                        n_head,
                        n_kv_head,
                        head_dim,
                        n_rot,
                        base,
                        neox,
                        bias,
                        qk_norm,
                    } => format!(
                        "rope_kv(layer={layer} heads={n_head}/{n_kv_head}x{head_dim} n_rot={n_rot} base={base} {}{}{})",
                        if *neox { "neox" } else { "normal" },
                        if *bias { " bias" } else { "" },
                        qk_norm.map_or(String::new(), |eps| format!(" head_norms(eps={eps:e})"))
                    ),
                };
                let mut text = if *weights > 1 {
                    format!("weights={weights} ")
                } else {
                    String::new()
                };
                text += &match (partials, post_norm) {
                    (
                        Some(Partials {
                            into: PartialsInto::Input,
                            count,
                        }),
                        Some(eps),
                    ) => format!("x+=rms_norm(parts({count}), eps={eps:e}) "),
                    (
                        Some(Partials {
                            into: PartialsInto::Input,
                            count,
                        }),
                        None,
                    ) => {
                        format!("x+=parts({count}) ")
                    }
                    (_, Some(eps)) => format!("x+=rms_norm(y, eps={eps:e}) "),
                    _ => String::new(),
                };
                if let Some(Partials {
                    into: PartialsInto::Residual,
                    count,
                }) = partials
                {
                    text += &format!("residual+=parts({count}) ");
                }
                if let Some(eps) = norm {
                    text += &format!("prologue=rms_norm(eps={eps:e}) ");
                }
                text + &format!("epilogue={epilogue}")
            }
            _ => String::new(),
        }
    }

    pub fn is_weight(&self) -> bool {
        matches!(self, Op::Weight { .. })
    }
}
