//! Post-norm residual sums in the prologue of the products that read them.
//!
//! A post-norm block (Gemma 3) ends in `s = r + rmsnorm(y) * w`: the norm needs the whole row of
//! y, so neither the product that made y nor any epilogue can form s. The first product that reads
//! s (as the input of its own pre-norm) forms it instead, from r and y, as it loads its input: the
//! sum and its norm are two reductions over the row in one prologue. Where later ops need s too
//! (the next residual sum), that product also stores what it formed (`FormedInput`), so s is
//! still computed once and never by a step of its own.

use crate::ir::{Dim, Graph, NodeId, Op};
use llamart::plan::FusedInputs;

use super::pattern::only_user;

/// Returns how many sums it moved into products.
pub fn run(g: &mut Graph) -> usize {
    let mut fused = 0;
    for s in g.node_ids() {
        let Some((r, y, w, eps)) = match_sum(g, s) else {
            continue;
        };
        let users = g.users(s);
        // The first product (in construction order, the order they run in) that reads s as its
        // input forms it.
        let Some(&p) = users.iter().filter(|&&u| takes_as_input(g, u, s)).min() else {
            continue;
        };
        let Op::FusedMatMul {
            weights,
            norm,
            epilogue,
            partials,
            ..
        } = g.node(p).op
        else {
            unreachable!("checked by takes_as_input")
        };
        // y and its weight go after the product's weights (`FusedInputs`).
        let operands = g.operands(p);
        let split = 1 + weights as usize;
        let mut new_operands = vec![r];
        new_operands.extend_from_slice(&operands[1..split]);
        new_operands.extend([y, w]);
        new_operands.extend_from_slice(&operands[split..]);
        let formed_by = g.add(
            g.node(p).name.clone(),
            Op::FusedMatMul {
                weights,
                post_norm: Some(eps),
                norm,
                epilogue,
                partials,
            },
            &new_operands,
        );
        g.replace_uses(p, formed_by);
        if users.len() > 1 {
            let stored = g.add(g.node(s).name.clone(), Op::FormedInput, &[formed_by]);
            g.replace_uses(s, stored);
        }
        fused += 1;
    }
    fused
}

/// `s = r + rmsnorm(y) * w` over whole rows, the norm used only by the sum: (r, y, w, eps).
fn match_sum(g: &Graph, s: NodeId) -> Option<(NodeId, NodeId, NodeId, f32)> {
    if g.node(s).op != Op::Add || g.outputs.contains(&s) {
        return None;
    }
    let [a, b] = g.operands(s)[..] else {
        return None;
    };
    [(a, b), (b, a)].into_iter().find_map(|(r, n)| {
        let Op::RmsNorm { eps } = g.node(n).op else {
            return None;
        };
        let [y, w] = g.operands(n)[..] else {
            return None;
        };
        let whole_rows = matches!(g.ty(y).shape[..], [Dim::Tokens, Dim::Fixed(_)]);
        let residual = !g.node(r).op.is_weight() && r != y;
        (whole_rows && residual && only_user(g, n)? == s).then_some((r, y, w, eps))
    })
}

/// Whether `u` is a fused product that reads `s` as its input x, and only there, and has no
/// prologue sum of its own.
fn takes_as_input(g: &Graph, u: NodeId, s: NodeId) -> bool {
    let Op::FusedMatMul {
        weights,
        post_norm: None,
        norm,
        epilogue,
        partials,
    } = g.node(u).op
    else {
        return false;
    };
    if partials.is_some() {
        return false;
    }
    let layout = FusedInputs::new(weights, false, norm.is_some(), &epilogue, None);
    let operands = g.operands(u);
    operands.len() == layout.len && operands[0] == s && !operands[1..].contains(&s)
}
