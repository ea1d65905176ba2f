//! Gate and up as one matrix product with the gated activation in its epilogue:
//! `act(x Wg) * (x Wu)` becomes one product over `[Wg; Wu]` whose `Glu` epilogue stores
//! `act(gate) * up`, so neither half is ever stored. Gate and up of different types stay two
//! weights of the one product.

use crate::ir::{Epilogue, Graph, NodeId, Op};

use super::pattern::{only_user, stack_by_type};

/// A product `x W` used only by `user`: (x, W).
fn product(g: &Graph, id: NodeId, user: NodeId) -> Option<(NodeId, NodeId)> {
    (g.node(id).op == Op::MatMul && only_user(g, id)? == user).then(|| {
        let o = g.operands(id);
        (o[0], o[1])
    })
}

/// Returns how many FFNs it fused.
pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for mul in g.node_ids() {
        if g.node(mul).op != Op::Mul {
            continue;
        }
        let [a, b] = g.operands(mul)[..] else {
            continue;
        };
        // The activation is on either side of the product.
        let Some((act, (x, gate), (x_up, up))) = [(a, b), (b, a)].into_iter().find_map(|(a, b)| {
            let Op::Unary(act) = g.node(a).op else {
                return None;
            };
            (only_user(g, a)? == mul).then_some(())?;
            Some((act, product(g, g.operands(a)[0], a)?, product(g, b, mul)?))
        }) else {
            continue;
        };
        if x != x_up {
            continue;
        }
        // The gate weight's name: `blk.N.ffn_gate` becomes `blk.N.ffn_gate_up`.
        let name = format!("{}_up", g.node(gate).name);
        let Some(weights) = stack_by_type(g, &name, &[gate, up]) else {
            continue;
        };
        let mut operands = vec![x];
        operands.extend(&weights);
        let glu = g.add(
            name,
            Op::FusedMatMul {
                weights: weights.len() as u32,
                post_norm: None,
                norm: None,
                epilogue: Epilogue::Glu(act),
                partials: None,
            },
            &operands,
        );
        g.replace_uses(mul, glu);
        fused += 1;
    }
    fused
}
