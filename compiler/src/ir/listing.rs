//! Text forms of a graph: a compact, stable listing for snapshots and `--emit graph`, and
//! Graphviz DOT for `--emit dot`.

use std::collections::HashMap;
use std::fmt::Write;

use super::{Graph, NodeId};

/// One line per node: `%id = op(operands) attributes : type  # name`. Nodes appear in `order`
/// when given (a schedule), else in index order; ids are renumbered densely in that order so the
/// text does not depend on how many nodes earlier passes deleted.
pub fn render(g: &Graph, order: Option<&[NodeId]>) -> String {
    let ids: Vec<NodeId> = match order {
        Some(o) => o.to_vec(),
        None => g.node_ids(),
    };
    let number: HashMap<NodeId, usize> = ids.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let name_of = |n: NodeId| {
        number
            .get(&n)
            .map_or_else(|| format!("%?{}", n.index()), |i| format!("%{i}"))
    };
    let mut out = String::new();
    for &id in &ids {
        let node = g.node(id);
        let operands: Vec<String> = g.operands(id).into_iter().map(name_of).collect();
        let _ = write!(
            out,
            "{} = {}({})",
            name_of(id),
            node.op.mnemonic(),
            operands.join(", ")
        );
        let attrs = node.op.attributes();
        if !attrs.is_empty() {
            let _ = write!(out, " {attrs}");
        }
        if let Some(ty) = &node.ty {
            let _ = write!(out, " : {ty}");
        }
        let _ = writeln!(out, "  # {}", node.name);
    }
    let outs: Vec<String> = g.outputs.iter().map(|&n| name_of(n)).collect();
    let _ = writeln!(out, "outputs: {}", outs.join(", "));
    out
}

/// The graph in Graphviz DOT: one box per node (op, attributes, type, name), edges labelled with
/// the operand position.
pub fn dot(g: &Graph) -> String {
    use petgraph::dot::{Config, Dot};
    let escape = |s: String| s.replace('\\', "\\\\").replace('"', "\\\"");
    let node_attrs = |_, (_, node): (NodeId, &super::Node)| {
        let attrs = node.op.attributes();
        let ty = node.ty.as_ref().map(|t| t.to_string()).unwrap_or_default();
        format!(
            "label=\"{}{}\\n{}\\n{}\" shape=box",
            node.op.mnemonic(),
            if attrs.is_empty() {
                String::new()
            } else {
                format!(" {}", escape(attrs))
            },
            escape(ty),
            escape(node.name.clone()),
        )
    };
    let edge_attrs = |_, e: petgraph::stable_graph::EdgeReference<'_, u8, u32>| {
        format!("label=\"{}\"", e.weight())
    };
    format!(
        "{:?}",
        Dot::with_attr_getters(
            &g.dag,
            &[Config::NodeNoLabel, Config::EdgeNoLabel],
            &edge_attrs,
            &node_attrs,
        )
    )
}
