//! The output projection folded into the attention, with the residual add moved to the products
//! that read the sum.
//!
//! `x' = r + W_o attention(q)` is the one value of a layer every later product needs whole, so
//! computing it takes a dispatch of its own. This pass removes that dispatch: the attention step
//! also multiplies each head's output by that head's columns of W_o (`AttentionProject`), and the
//! products that read x' (the FFN's norm-and-gate/up as its input, the down projection as its
//! residual) add `r` and the heads' parts themselves as they load them. On the GPU the per-head
//! parts are what one workgroup per head can compute; the CPU writes the whole projection as the
//! first part and zeros as the others, so its logits keep every bit.
//!
//! With a post-norm (Gemma 3: `x' = r + rmsnorm(W_o attention(q)) * w`), the projection has no
//! residual of its own: the product whose post-norm prologue forms x' takes the parts as the y it
//! normalizes.

use crate::ir::{Dim, Epilogue, Graph, NodeId, Op, Partials, PartialsInto};
use crate::wgsl::MAX_STAGED_VALUES;
use llamart::plan::FusedInputs;

use super::pattern::only_user;

/// Returns how many attentions it fused.
pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for a in g.node_ids() {
        let Some(m) = match_projection(g, a) else {
            continue;
        };
        let rewrites: Option<Vec<(NodeId, PartialsInto)>> = g
            .users(a)
            .into_iter()
            .map(|u| consumer(g, u, a, m.residual.is_some()))
            .collect();
        let Some(rewrites) = rewrites.filter(|r| !r.is_empty()) else {
            continue;
        };
        if rewrites
            .iter()
            .any(|&(_, into)| into == PartialsInto::Input)
            && m.n_embd > u64::from(MAX_STAGED_VALUES)
        {
            continue;
        }
        let parts = g.add(
            g.node(a).name.clone(),
            Op::AttentionProject {
                layer: m.layer,
                scale: m.scale,
                window: m.window,
            },
            &[m.q, m.w_o],
        );
        for (u, into) in rewrites {
            let Op::FusedMatMul {
                weights,
                post_norm,
                norm,
                epilogue,
                ..
            } = g.node(u).op
            else {
                unreachable!("checked by consumer()")
            };
            let mut operands: Vec<NodeId> = match m.residual {
                Some(r) => g
                    .operands(u)
                    .into_iter()
                    .map(|o| if o == a { r } else { o })
                    .collect(),
                // The post-norm's y: the parts stand for it.
                None => g.operands(u).into_iter().filter(|&o| o != a).collect(),
            };
            operands.push(parts);
            let new = g.add(
                g.node(u).name.clone(),
                Op::FusedMatMul {
                    weights,
                    post_norm,
                    norm,
                    epilogue,
                    partials: Some(Partials {
                        into,
                        count: m.n_head,
                    }),
                },
                &operands,
            );
            g.replace_uses(u, new);
        }
        fused += 1;
    }
    fused
}

struct Projection {
    q: NodeId,
    w_o: NodeId,
    /// The residual the projection adds (None: it stores the projection alone).
    residual: Option<NodeId>,
    layer: u32,
    scale: f32,
    window: Option<u32>,
    n_head: u32,
    n_embd: u64,
}

/// `a = r + W_o flatten(attention(q))`, or `a = W_o flatten(attention(q))`, the attention reading
/// q alone (its KV written by a fused QKV product) and used only through this projection.
fn match_projection(g: &Graph, a: NodeId) -> Option<Projection> {
    let (flat, w_o, residual) = match (&g.node(a).op, &g.operands(a)[..]) {
        (
            Op::FusedMatMul {
                weights: 1,
                post_norm: None,
                norm: None,
                epilogue: Epilogue::Add,
                partials: None,
            },
            &[flat, w_o, residual],
        ) => (flat, w_o, Some(residual)),
        (Op::MatMul, &[flat, w_o]) => (flat, w_o, None),
        _ => return None,
    };
    if g.outputs.contains(&a) {
        return None;
    }
    let att = *g.operands(flat).first()?;
    if !matches!(g.node(flat).op, Op::Reshape(_)) || only_user(g, flat)? != a {
        return None;
    }
    let Op::Attention {
        layer,
        scale,
        window,
    } = g.node(att).op
    else {
        return None;
    };
    let [q] = g.operands(att)[..] else {
        return None;
    };
    if only_user(g, att)? != flat {
        return None;
    }
    let [Dim::Tokens, Dim::Fixed(n_head), _] = g.ty(q).shape[..] else {
        return None;
    };
    let [Dim::Tokens, Dim::Fixed(n_embd)] = g.ty(a).shape[..] else {
        return None;
    };
    Some(Projection {
        q,
        w_o,
        residual,
        layer,
        scale,
        window,
        n_head: n_head as u32,
        n_embd,
    })
}

/// How user `u` can take `a` as a sum of parts: as its input or as its residual (a projection
/// with a residual), or as the y of its post-norm (one without).
fn consumer(
    g: &Graph,
    u: NodeId,
    a: NodeId,
    with_residual: bool,
) -> Option<(NodeId, PartialsInto)> {
    let Op::FusedMatMul {
        weights,
        post_norm,
        norm,
        epilogue,
        partials: None,
    } = g.node(u).op
    else {
        return None;
    };
    let layout = FusedInputs::new(
        weights,
        post_norm.is_some(),
        norm.is_some(),
        &epilogue,
        None,
    );
    let operands = g.operands(u);
    let at: Vec<usize> = (0..operands.len()).filter(|&i| operands[i] == a).collect();
    match (&at[..], with_residual) {
        (&[i], false) if Some(i) == layout.post_y => Some((u, PartialsInto::Input)),
        (&[0], true) if post_norm.is_none() => Some((u, PartialsInto::Input)),
        (&[i], true) if Some(i) == layout.epilogue && epilogue == Epilogue::Add => {
            Some((u, PartialsInto::Residual))
        }
        _ => None,
    }
}
