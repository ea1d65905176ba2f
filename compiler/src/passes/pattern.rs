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
