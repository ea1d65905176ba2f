//! Residual adds in the epilogue of the product that feeds them: `r + x W` becomes one product
//! whose `Add` epilogue adds r as it stores, so the product's result is never stored alone.

use crate::ir::{Epilogue, Graph, Op};

use super::pattern::only_user;

/// Returns how many adds it fused.
pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for add in g.node_ids() {
        if g.node(add).op != Op::Add {
            continue;
        }
        let [a, b] = g.operands(add)[..] else {
            continue;
        };
        // Broadcast adds (biases) have a weight operand: not residuals.
        if g.node(a).op.is_weight() || g.node(b).op.is_weight() {
            continue;
        }
        let found = [(b, a), (a, b)].into_iter().find(|&(m, r)| {
            let storing = match g.node(m).op {
                Op::MatMul => true,
                Op::FusedMatMul {
                    epilogue, partials, ..
                } => epilogue == Epilogue::Store && partials.is_none(),
                _ => false,
            };
            storing && m != r && only_user(g, m) == Some(add)
        });
        let Some((m, r)) = found else {
            continue;
        };
        let (weights, post_norm, norm) = match g.node(m).op {
            Op::FusedMatMul {
                weights,
                post_norm,
                norm,
                ..
            } => (weights, post_norm, norm),
            _ => (1, None, None),
        };
        let mut operands = g.operands(m);
        operands.push(r);
        let fused_add = g.add(
            g.node(m).name.clone(),
            Op::FusedMatMul {
                weights,
                post_norm,
                norm,
                epilogue: Epilogue::Add,
                partials: None,
            },
            &operands,
        );
        g.replace_uses(add, fused_add);
        fused += 1;
    }
    fused
}
