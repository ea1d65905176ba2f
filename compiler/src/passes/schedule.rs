//! Scheduling: a deterministic topological order of the graph.
//!
//! Kahn's algorithm that always takes the ready node with the smallest index, so the order follows
//! construction order (layer by layer) wherever dependencies allow: the same graph always gets the
//! same schedule, and values are consumed soon after they are produced.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use petgraph::Direction;

use crate::ir::{Graph, NodeId};

pub fn topological(g: &Graph) -> Vec<NodeId> {
    let mut pending: HashMap<NodeId, usize> = g
        .dag
        .node_indices()
        .map(|n| (n, g.dag.neighbors_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeId>> = pending
        .iter()
        .filter(|(_, &c)| c == 0)
        .map(|(&n, _)| Reverse(n))
        .collect();
    let mut order = Vec::with_capacity(pending.len());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(n);
        // One decrement per edge: a node using the same operand twice has two edges.
        for user in g.dag.neighbors_directed(n, Direction::Outgoing) {
            let c = pending.get_mut(&user).expect("user is a node");
            *c -= 1;
            if *c == 0 {
                ready.push(Reverse(user));
            }
        }
    }
    assert_eq!(order.len(), g.dag.node_count(), "the op graph has a cycle");
    order
}

/// The schedule the rest of the pipeline and the plan use.
pub fn run(g: &Graph) -> Vec<NodeId> {
    topological(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Op;

    #[test]
    fn order_respects_dependencies_and_prefers_construction_order() {
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let a = g.add("a", Op::Scale(2.0), &[ids]);
        let b = g.add("b", Op::Scale(3.0), &[ids]);
        let c = g.add("c", Op::Add, &[b, a]);
        let d = g.add("d", Op::Mul, &[c, c]);
        assert_eq!(run(&g), vec![ids, a, b, c, d]);
        assert_eq!(run(&g), run(&g.clone()));
    }
}
