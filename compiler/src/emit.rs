//! Emission: turns the scheduled, memory-planned graph into the plan the runtime replays.

use std::collections::HashMap;

use llamart::cpu::dot::pack;
use llamart::plan::{
    Activations, ArenaLayout, Buf, Kernel, Limits, ModelInfo, PlanHeader, Step, WeightInfo,
    FORMAT_VERSION, WEIGHT_ALIGN,
};
use thiserror::Error;

use crate::gguf::GgufFile;
use crate::ir::{Dim, Graph, NodeId, Op};
use crate::lower::Hparams;
use crate::passes::{Compiled, PipelineOptions};

#[derive(Debug, Error)]
pub enum EmitError {
    #[error("node '{node}': {why}")]
    Unsupported { node: String, why: String },
    #[error(transparent)]
    Gpu(#[from] crate::wgsl::GpuError),
}

/// A weight's bytes: borrowed from the GGUF file or computed by the compiler.
pub type WeightBytes<'a> = std::borrow::Cow<'a, [u8]>;

pub struct Emitted<'a> {
    pub header: PlanHeader,
    pub weights: Vec<WeightBytes<'a>>,
    /// The graph node each step of `header.steps` computes, by name (for the compile report).
    pub step_names: Vec<String>,
}

pub fn emit<'a>(
    c: &Compiled,
    file: &'a GgufFile,
    hp: &Hparams,
    options: PipelineOptions,
    activations: Activations,
) -> Result<Emitted<'a>, EmitError> {
    let g = &c.graph;
    let mut weights: Vec<WeightInfo> = Vec::new();
    let mut weight_bytes: Vec<WeightBytes<'a>> = Vec::new();
    let mut weight_index: HashMap<NodeId, u32> = HashMap::new();
    let mut weights_len = 0u64;

    let mut buf_of = |id: NodeId, weights: &mut Vec<WeightInfo>| -> Buf {
        let node = g.node(id);
        if let Op::Weight { data, ty, dims } = &node.op {
            let index = *weight_index.entry(id).or_insert_with(|| {
                let bytes = data.bytes(file).expect("lowering checked the tensors");
                let len = bytes.len() as u64;
                weights.push(WeightInfo {
                    name: node.name.clone(),
                    ty: *ty,
                    dims: dims.clone(),
                    offset: weights_len,
                    bytes: len,
                    packed: false,
                });
                weight_bytes.push(bytes);
                weights_len = (weights_len + len).div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
                weights.len() as u32 - 1
            });
            return Buf::Weight(index);
        }
        let p = &c.memory.placements[&g.storage_root(id)];
        Buf::Arena {
            offset: p.offset,
            row_bytes: p.row_bytes,
        }
    };

    let mut steps = Vec::new();
    let mut step_names = Vec::new();
    let mut token_ids = None;
    for &id in &c.schedule {
        let node = g.node(id);
        match node.op {
            // A formed input is stored by the product that forms it (`Step::formed`).
            Op::Weight { .. } | Op::Reshape(_) | Op::FormedInput => continue,
            Op::TokenIds => {
                token_ids = Some(buf_of(id, &mut weights));
                continue;
            }
            _ => {}
        }
        let kernel = kernel_for(g, id)?;
        let inputs = g
            .operands(id)
            .into_iter()
            .map(|o| buf_of(o, &mut weights))
            .collect();
        let output = buf_of(id, &mut weights);
        let formed = g
            .users(id)
            .into_iter()
            .find(|&u| g.node(u).op == Op::FormedInput)
            .map(|u| buf_of(u, &mut weights));
        steps.push(Step {
            kernel,
            inputs,
            output,
            formed,
        });
        step_names.push(node.name.clone());
    }
    let logits = buf_of(g.outputs[0], &mut weights);
    let mut header = PlanHeader {
        format_version: FORMAT_VERSION,
        compiler_version: crate::COMPILER_VERSION.to_string(),
        model: ModelInfo {
            architecture: hp.arch.clone(),
            name: file
                .get("general.name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string(),
            n_vocab: hp.n_vocab as u32,
            n_embd: hp.n_embd as u32,
            n_layer: hp.n_layer as u32,
            n_ctx_train: hp.n_ctx_train as u32,
            chat_template: file
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        },
        limits: Limits {
            ctx: options.ctx,
            max_batch: options.max_batch,
            kv_tokens: options.kv_tokens,
            page_tokens: llamart::plan::KV_PAGE_TOKENS,
            max_seqs: options.max_seqs,
        },
        activations,
        arena: ArenaLayout {
            bytes: c.memory.arena_bytes,
        },
        kv: c.kv.clone(),
        token_ids: token_ids.expect("every graph reads token ids"),
        logits,
        steps,
        weights,
        // Derived from the finished CPU schedule just below.
        gpu: Default::default(),
    };
    pack_product_weights(&mut header, &mut weight_bytes);
    header.gpu = crate::wgsl::gpu_section(&header)?;
    Ok(Emitted {
        header,
        weights: weight_bytes,
        step_names,
    })
}

/// Stores the weights of matrix products in the CPU's packed layout where the CPU multiplies
/// them with packed kernels (the legacy types and the K-quants with quantized activations, at
/// least one group of rows), so that it maps them as they are instead of re-laying a copy at load.
fn pack_product_weights(header: &mut PlanHeader, bytes: &mut [WeightBytes<'_>]) {
    for step in &header.steps {
        let (k, weights) = match step.kernel {
            Kernel::MatMul { k, .. } => (k, 1..2),
            Kernel::FusedMatMul { k, .. } => (
                k,
                step.kernel.fused_inputs().expect("a fused product").weights,
            ),
            Kernel::AttentionProject {
                n_head, head_dim, ..
            } => (n_head * head_dim, 1..2),
            _ => continue,
        };
        for i in weights {
            let Some(&Buf::Weight(w)) = step.inputs.get(i) else {
                continue;
            };
            let info = &mut header.weights[w as usize];
            let n = info.dims[1] as usize;
            let wanted = header.activations.terms(info.ty).is_some()
                && pack::can_pack(info.ty)
                && n >= pack::PACK_ROWS;
            if wanted && !info.packed {
                let packed = pack::pack(info.ty, &bytes[w as usize], k as usize, n)
                    .expect("a packable type");
                bytes[w as usize] = WeightBytes::Owned(packed);
                info.packed = true;
            }
        }
    }
}

fn fixed(d: &Dim) -> u32 {
    match d {
        Dim::Fixed(n) => *n as u32,
        Dim::Tokens => unreachable!("only the leading dimension is T"),
    }
}

/// The dims of a product's weight, if the CPU multiplies its type (the error says which types it
/// does).
fn product_weight(g: &Graph, w: NodeId) -> Result<&[u64], String> {
    let Op::Weight { ty, dims, .. } = &g.node(w).op else {
        unreachable!("typed as weight")
    };
    if !llamart::cpu::matmul_supports(*ty) {
        return Err(format!(
            "matrix product with {ty} weights is not supported (supported: {})",
            llamart::cpu::MATMUL_TYPES
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(dims)
}

/// (query heads, KV heads, head dim) of attention node `id`, from its q operand and its cache.
fn attention_heads(g: &Graph, id: NodeId) -> (u32, u32, u32) {
    let q = g.ty(g.operands(id)[0]);
    let (n_kv_head, _) = g
        .attention_kv_heads(id)
        .expect("shape inference checked attention operands");
    (fixed(&q.shape[1]), n_kv_head as u32, fixed(&q.shape[2]))
}

fn kernel_for(g: &Graph, id: NodeId) -> Result<Kernel, EmitError> {
    let node = g.node(id);
    let ty = g.ty(id);
    let per_token = ty.per_token_elements().expect("activation") as u32;
    let operands = g.operands(id);
    let unsupported = |why: String| EmitError::Unsupported {
        node: node.name.clone(),
        why,
    };
    let second_is_weight = || operands.get(1).is_some_and(|&o| g.node(o).op.is_weight());
    Ok(match &node.op {
        Op::FormedInput => unreachable!("stored by the product that forms it"),
        Op::Embed { scale } => {
            let Op::Weight { ty: wt, .. } = &g.node(operands[0]).op else {
                unreachable!("typed as weight")
            };
            if !llamart::quant::can_dequantize(*wt) {
                return Err(unsupported(format!(
                    "embedding table of type {wt} cannot be read"
                )));
            }
            Kernel::Embed {
                n: per_token,
                scale: *scale,
            }
        }
        Op::RmsNorm { eps } => {
            let n = fixed(ty.shape.last().expect("has dims"));
            Kernel::RmsNorm {
                n,
                groups: per_token / n,
                eps: *eps,
            }
        }
        Op::MatMul => {
            let dims = product_weight(g, operands[1]).map_err(unsupported)?;
            Kernel::MatMul {
                k: dims[0] as u32,
                n: dims[1] as u32,
            }
        }
        Op::FusedMatMul {
            weights,
            post_norm,
            norm,
            epilogue,
            partials,
        } => {
            let mut n = 0;
            let mut k = 0;
            for &w in &operands[1..=*weights as usize] {
                let dims = product_weight(g, w).map_err(unsupported)?;
                (k, n) = (dims[0], n + dims[1]);
            }
            Kernel::FusedMatMul {
                k: k as u32,
                n: n as u32,
                weights: *weights,
                post_norm: *post_norm,
                norm: *norm,
                epilogue: *epilogue,
                partials: *partials,
            }
        }
        Op::AttentionProject {
            layer,
            scale,
            window,
        } => {
            let dims = product_weight(g, operands[1]).map_err(unsupported)?;
            let (n_head, n_kv_head, head_dim) = attention_heads(g, id);
            Kernel::AttentionProject {
                layer: *layer,
                n_head,
                n_kv_head,
                head_dim,
                scale: *scale,
                window: *window,
                n: dims[1] as u32,
            }
        }
        Op::Add => Kernel::Add {
            n: per_token,
            broadcast: second_is_weight(),
        },
        Op::Mul => Kernel::Mul {
            n: per_token,
            broadcast: second_is_weight(),
        },
        Op::Scale(f) => Kernel::Scale {
            n: per_token,
            factor: *f,
        },
        Op::AddScalar(_) => {
            return Err(unsupported(
                "adding a scalar to activations has no kernel".into(),
            ))
        }
        Op::Unary(op) => Kernel::Unary {
            n: per_token,
            op: *op,
        },
        Op::Rope { n_rot, base, neox } => Kernel::Rope {
            n_head: fixed(&ty.shape[1]),
            head_dim: fixed(&ty.shape[2]),
            n_rot: *n_rot,
            base: *base,
            neox: *neox,
        },
        Op::Attention {
            layer,
            scale,
            window,
        } => {
            let (n_head, n_kv_head, head_dim) = attention_heads(g, id);
            Kernel::Attention {
                layer: *layer,
                n_head,
                n_kv_head,
                head_dim,
                scale: *scale,
                window: *window,
                append: operands.len() == 3,
            }
        }
        Op::TokenIds | Op::Weight { .. } | Op::Reshape(_) => unreachable!("not kernels"),
    })
}
