//! What the fusion passes match and build with: single-use checks and weight stacking.

use llamart::GgmlType;

use crate::ir::{Graph, NodeId, Op, WeightData};

/// The one node that uses `id`, if exactly one node uses it, in exactly one operand, and `id` is
/// not a graph output: then fusing `id` into that user changes no one else's view of it.
pub fn only_user(g: &Graph, id: NodeId) -> Option<NodeId> {
    if g.outputs.contains(&id) {
        return None;
    }
    match g.users(id)[..] {
        [user] if g.operands(user).iter().filter(|&&o| o == id).count() == 1 => Some(user),
        _ => None,
    }
}

/// A weight node's data, type and ggml dims.
pub fn weight(g: &Graph, id: NodeId) -> Option<(&WeightData, GgmlType, &[u64])> {
    match &g.node(id).op {
        Op::Weight { data, ty, dims } => Some((data, *ty, dims)),
        _ => None,
    }
}

/// A new weight holding `parts` row after row (ggml dims `[k, n1 + n2 + ...]`, or `[n1 + ...]`
/// for vectors), if they share type and row length; stacking copies bytes, so the product over
/// it computes exactly what the products over the parts did.
pub fn stack_weights(g: &mut Graph, name: String, parts: &[NodeId]) -> Option<NodeId> {
    let (_, ty, dims) = weight(g, *parts.first()?)?;
    let (ty, row) = (ty, dims[..dims.len() - 1].to_vec());
    let mut data = Vec::new();
    let mut rows = 0;
    for &p in parts {
        let (d, t, dims) = weight(g, p)?;
        if t != ty || dims[..dims.len() - 1] != row[..] {
            return None;
        }
        rows += dims[dims.len() - 1];
        data.push(d.clone());
    }
    let mut dims = row;
    dims.push(rows);
    Some(g.add(
        name,
        Op::Weight {
            data: WeightData::Concat(data),
            ty,
            dims,
        },
        &[],
    ))
}

/// The weights of a product over `parts` stacked by rows, in order: each run of neighbouring parts
/// of one type stacked into one weight ([`stack_weights`]), so a Q4_K_M layer whose V is one type
/// above Q and K gives two weights. None if the parts differ in row length or would make more
/// than a fused product takes.
pub fn stack_by_type(g: &mut Graph, name: &str, parts: &[NodeId]) -> Option<Vec<NodeId>> {
    let mut runs: Vec<Vec<NodeId>> = Vec::new();
    let mut row = None;
    for &p in parts {
        let (_, ty, dims) = weight(g, p)?;
        let this_row = dims[..dims.len() - 1].to_vec();
        if row.get_or_insert_with(|| this_row.clone()) != &this_row {
            return None;
        }
        match runs.last_mut() {
            Some(run) if weight(g, run[0]).map(|w| w.1) == Some(ty) => run.push(p),
            _ => runs.push(vec![p]),
        }
    }
    if runs.is_empty() || runs.len() > llamart::plan::MAX_STACKED_WEIGHTS {
        return None;
    }
    let single = runs.len() == 1;
    runs.into_iter()
        .enumerate()
        .map(|(i, run)| match run[..] {
            [one] if !single => Some(one),
            _ if single => stack_weights(g, name.to_string(), &run),
            _ => stack_weights(g, format!("{name}.{i}"), &run),
        })
        .collect()
}
