//! A constant scale of the embeddings (Gemma: sqrt(n_embd)) into the embedding lookup, which
//! multiplies each row as it stores it, as the scale step did: one step fewer, and the same bits.

use crate::ir::{Graph, Op};

use super::pattern::only_user;

/// Returns how many scales it folded.
pub fn run(g: &mut Graph) -> usize {
    let mut folded = 0;
    for s in g.node_ids() {
        let Op::Scale(factor) = g.node(s).op else {
            continue;
        };
        let e = g.operands(s)[0];
        let Op::Embed { scale } = g.node(e).op else {
            continue;
        };
        if only_user(g, e) != Some(s) {
            continue;
        }
        let scaled = g.add(
            g.node(s).name.clone(),
            Op::Embed {
                scale: scale * factor,
            },
            &g.operands(e),
        );
        g.replace_uses(s, scaled);
        folded += 1;
    }
    folded
}
