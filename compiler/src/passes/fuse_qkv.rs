//! Q, K and V as one matrix product, with RoPE and the KV-cache write in its epilogue.
//!
//! Matches, per attention: three products of the same input (each maybe plus a bias), viewed as
//! heads, q and k through the same RoPE. Their weights (and biases) are stacked into one, and the
//! product's `RopeKv` epilogue rotates q into its output and stores rotated k and v straight into
//! the layer's cache, so the attention reads q alone. The two passes the issue names are one here
//! because the merged product without its epilogue would have three outputs, which no step has.
//! Weights of different types (Q4_K_M keeps some V a type above Q and K) stay separate weights of
//! the one product. Per-head RMSNorms of q and k before RoPE (Gemma 3) move into the epilogue too,
//! where the GPU's workgroups hold whole heads (head dimensions that divide its 256 values).

use crate::ir::{Epilogue, Graph, NodeId, Op};

use super::pattern::{only_user, stack_by_type, stack_weights};

/// A projection `x W (+ bias)`.
struct Projection {
    x: NodeId,
    w: NodeId,
    bias: Option<NodeId>,
}

/// The projection `id`, if only `user` uses it.
fn projection(g: &Graph, id: NodeId, user: NodeId) -> Option<Projection> {
    if only_user(g, id)? != user {
        return None;
    }
    match g.node(id).op {
        Op::MatMul => {
            let o = g.operands(id);
            Some(Projection {
                x: o[0],
                w: o[1],
                bias: None,
            })
        }
        Op::Add => {
            let o = g.operands(id);
            let (m, b) = (o[0], o[1]);
            let bias = g.node(b).op.is_weight().then_some(b)?;
            let p = projection(g, m, id)?;
            p.bias.is_none().then_some(Projection {
                bias: Some(bias),
                ..p
            })
        }
        _ => None,
    }
}

/// `Reshape([heads, head_dim])` of a projection, used only by `user`: (heads, head_dim,
/// projection).
fn heads(g: &Graph, id: NodeId, user: NodeId) -> Option<(u32, u32, Projection)> {
    let Op::Reshape(dims) = &g.node(id).op else {
        return None;
    };
    let [h, hd] = dims[..] else { return None };
    if only_user(g, id)? != user {
        return None;
    }
    Some((h as u32, hd as u32, projection(g, g.operands(id)[0], id)?))
}

/// Returns how many attentions it fused.
pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for att in g.node_ids() {
        let Op::Attention { layer, .. } = g.node(att).op else {
            continue;
        };
        let Some(plan) = match_layer(g, att) else {
            continue;
        };
        let Plan {
            x,
            weights,
            biases,
            rope: (n_rot, base, neox),
            head_norms,
            n_head,
            n_kv_head,
            head_dim,
        } = plan;
        let Some(weights) = stack_by_type(g, &format!("blk.{layer}.attn_qkv"), &weights) else {
            continue;
        };
        let mut operands = vec![x];
        operands.extend(&weights);
        if let Some(b) = &biases {
            match stack_weights(g, format!("blk.{layer}.attn_qkv.bias"), b) {
                Some(b) => operands.push(b),
                None => continue,
            }
        }
        if let Some((_, wq, wk)) = head_norms {
            operands.extend([wq, wk]);
        }
        let epilogue = Epilogue::RopeKv {
            layer,
            n_head,
            n_kv_head,
            head_dim,
            n_rot,
            base,
            neox,
            bias: biases.is_some(),
            qk_norm: head_norms.map(|(eps, _, _)| eps),
        };
        let qkv = g.add(
            format!("blk.{layer}.attn_qkv"),
            Op::FusedMatMul {
                weights: weights.len() as u32,
                post_norm: None,
                norm: None,
                epilogue,
                partials: None,
            },
            &operands,
        );
        let q = g.add(
            format!("blk.{layer}.q_heads"),
            Op::Reshape(vec![n_head.into(), head_dim.into()]),
            &[qkv],
        );
        let new_att = g.add(g.node(att).name.clone(), g.node(att).op.clone(), &[q]);
        g.replace_uses(att, new_att);
        fused += 1;
    }
    fused
}

struct Plan {
    x: NodeId,
    weights: [NodeId; 3],
    biases: Option<[NodeId; 3]>,
    /// n_rot, base, neox of the RoPE q and k share.
    rope: (u32, f32, bool),
    /// The per-head RMSNorms of q and k before RoPE: eps, q weight, k weight.
    head_norms: Option<(f32, NodeId, NodeId)>,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
}

fn match_layer(g: &Graph, att: NodeId) -> Option<Plan> {
    let [q_rope, k_rope, v] = g.operands(att)[..] else {
        return None;
    };
    let rope = |r: NodeId| -> Option<((u32, f32, bool), NodeId)> {
        let Op::Rope { n_rot, base, neox } = g.node(r).op else {
            return None;
        };
        (only_user(g, r)? == att).then(|| ((n_rot, base, neox), g.operands(r)[0]))
    };
    // A per-head norm between the heads and RoPE: (eps, weight, the heads).
    let head_norm = |n: NodeId, user: NodeId| -> Option<(f32, NodeId, NodeId)> {
        let Op::RmsNorm { eps } = g.node(n).op else {
            return None;
        };
        (only_user(g, n)? == user).then_some(())?;
        let [heads, w] = g.operands(n)[..] else {
            return None;
        };
        Some((eps, w, heads))
    };
    let ((q_op, q), (k_op, k)) = (rope(q_rope)?, rope(k_rope)?);
    if q_op != k_op {
        return None;
    }
    let (q, q_user, k, k_user, head_norms) = match (head_norm(q, q_rope), head_norm(k, k_rope)) {
        (Some((eq, wq, qh)), Some((ek, wk, kh))) if eq == ek => (qh, q, kh, k, Some((eq, wq, wk))),
        (None, None) => (q, q_rope, k, k_rope, None),
        _ => return None,
    };
    let (n_head, hd, pq) = heads(g, q, q_user)?;
    let (n_kv_head, hd_k, pk) = heads(g, k, k_user)?;
    let (n_kv_v, hd_v, pv) = heads(g, v, att)?;
    if pq.x != pk.x || pk.x != pv.x || hd != hd_k || hd != hd_v || n_kv_head != n_kv_v {
        return None;
    }
    if head_norms.is_some() && !crate::wgsl::head_norm_fits(hd) {
        return None;
    }
    let biases = match (pq.bias, pk.bias, pv.bias) {
        (Some(q), Some(k), Some(v)) => Some([q, k, v]),
        (None, None, None) => None,
        _ => return None,
    };
    Some(Plan {
        x: pq.x,
        weights: [pq.w, pk.w, pv.w],
        biases,
        rope: q_op,
        head_norms,
        n_head,
        n_kv_head,
        head_dim: hd,
    })
}
