//! The closed op set every architecture lowers into.

use super::WeightData;
use llamart::GgmlType;

pub use llamart::plan::UnaryOp;

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
    /// Rows of a table `[n, vocab]` picked by token ids. Operands: table, ids.
    Embed,
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
    /// Reinterprets the operand with a new shape of the same per-token size (no data movement).
    Reshape(Vec<u64>),
    /// Rotary position embedding on `[T, heads, head_dim]`, positions counted from the cache.
    Rope {
        n_rot: u32,
        base: f32,
        neox: bool,
    },
    /// Causal attention over the layer's KV cache after appending k and v. Operands: q
    /// `[T, H, hd]`, k `[T, Hkv, hd]`, v `[T, Hkv, hd]`.
    Attention {
        layer: u32,
        scale: f32,
        window: Option<u32>,
    },
}

impl Op {
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::TokenIds => "token_ids",
            Op::Weight { .. } => "weight",
            Op::Embed => "embed",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul => "matmul",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::AddScalar(_) => "add_scalar",
            Op::Scale(_) => "scale",
            Op::Unary(UnaryOp::Silu) => "silu",
            Op::Unary(UnaryOp::GeluTanh) => "gelu_tanh",
            Op::Reshape(_) => "reshape",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
        }
    }

    /// Attributes worth showing in a listing, as text.
    pub fn attributes(&self) -> String {
        match self {
            Op::Weight { data, .. } => match data {
                WeightData::Gguf(name) => format!("gguf:{name}"),
                WeightData::Computed(_) => "computed".into(),
            },
            Op::RmsNorm { eps } => format!("eps={eps:e}"),
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
            } => match window {
                Some(w) => format!("layer={layer} scale={scale} window={w}"),
                None => format!("layer={layer} scale={scale}"),
            },
            _ => String::new(),
        }
    }

    pub fn is_weight(&self) -> bool {
        matches!(self, Op::Weight { .. })
    }
}
