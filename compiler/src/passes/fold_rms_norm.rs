//! RMSNorm folded into the products that consume it, as a prologue: each product normalizes its
//! input row itself, so the normalized activations are never stored.
//!
//! Pre-multiplying the norm weight into the product's weight would save the prologue's multiply,
//! but it is exact only for f32 weights; every supported model stores its products quantized, so
//! the norm weight stays an operand of the prologue.

use crate::ir::{Dim, Epilogue, Graph, Op};

/// Returns how many norms it folded.
pub fn run(g: &mut Graph) -> usize {
    let mut folded = 0;
    for norm in g.node_ids() {
        let Op::RmsNorm { eps } = g.node(norm).op else {
            continue;
        };
        let [x, w] = g.operands(norm)[..] else {
            continue;
        };
        // Only norms over whole rows (not per head) of a `[T, k]` input.
        if !matches!(g.ty(x).shape[..], [Dim::Tokens, Dim::Fixed(_)]) || g.outputs.contains(&norm) {
            continue;
        }
        let users = g.users(norm);
        let foldable = |u| {
            let operands = g.operands(u);
            let plain = match g.node(u).op {
                Op::MatMul => true,
                Op::FusedMatMul {
                    norm,
                    partials,
                    post_norm,
                    ..
                } => norm.is_none() && partials.is_none() && post_norm.is_none(),
                _ => false,
            };
            plain && operands[0] == norm && !operands[1..].contains(&norm)
        };
        if users.is_empty() || !users.iter().all(|&u| foldable(u)) {
            continue;
        }
        for u in users {
            let (weights, epilogue) = match g.node(u).op {
                Op::FusedMatMul {
                    weights, epilogue, ..
                } => (weights, epilogue),
                _ => (1, Epilogue::Store),
            };
            // The norm weight goes after the product's weights (`FusedInputs`).
            let operands = g.operands(u);
            let split = 1 + weights as usize;
            let mut new_operands = vec![x];
            new_operands.extend_from_slice(&operands[1..split]);
            new_operands.push(w);
            new_operands.extend_from_slice(&operands[split..]);
            let fused = g.add(
                g.node(u).name.clone(),
                Op::FusedMatMul {
                    weights,
                    post_norm: None,
                    norm: Some(eps),
                    epilogue,
                    partials: None,
                },
                &new_operands,
            );
            g.replace_uses(u, fused);
        }
        folded += 1;
    }
    folded
}
