//! Dead-code elimination: removes every node the outputs do not depend on (unused weights in the
//! file, branches a fold made redundant).

use petgraph::visit::NodeIndexable;
use petgraph::Direction;

use crate::ir::Graph;

/// Returns how many nodes were removed.
pub fn run(g: &mut Graph) -> usize {
    let mut live = vec![false; g.dag.node_bound()];
    let mut stack = g.outputs.clone();
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut live[n.index()], true) {
            continue;
        }
        stack.extend(g.dag.neighbors_directed(n, Direction::Incoming));
    }
    let dead: Vec<_> = g.dag.node_indices().filter(|n| !live[n.index()]).collect();
    for &n in &dead {
        g.dag.remove_node(n);
    }
    dead.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Op;

    #[test]
    fn removes_only_what_outputs_do_not_reach() {
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let used = g.add("used", Op::Scale(2.0), &[ids]);
        let unused = g.add("unused", Op::Scale(3.0), &[ids]);
        g.add("unused_too", Op::Scale(4.0), &[unused]);
        g.outputs.push(used);
        assert_eq!(run(&mut g), 2);
        let names: Vec<_> = g
            .node_ids()
            .into_iter()
            .map(|n| g.node(n).name.clone())
            .collect();
        assert_eq!(names, ["ids", "used"]);
        assert_eq!(run(&mut g), 0);
    }
}
