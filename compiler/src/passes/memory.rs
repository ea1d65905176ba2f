//! Liveness-based memory planning: every activation gets a fixed place in one arena, and values
//! whose lifetimes do not overlap share bytes.
//!
//! Activations are `[T, ...]` with T ≤ max_batch, so each is planned in per-token bytes and the
//! layout is scaled by max_batch: disjoint per-token intervals stay disjoint when scaled, and a
//! step with fewer tokens uses a prefix of each buffer.

use std::collections::HashMap;

use crate::ir::{Graph, NodeId, Op};

/// Every buffer starts at a multiple of this many bytes: enough for vector loads on the CPU and
/// for GPU storage-binding offsets (WebGPU's largest `minStorageBufferOffsetAlignment`).
pub const BUFFER_ALIGN: u64 = 256;

/// Per-token sizes are rounded up to a multiple of this, so that scaled by `max_batch` every
/// offset is a multiple of `BUFFER_ALIGN` (and at least 16-byte aligned).
fn row_align(max_batch: u32) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    // Both are powers of two, so their least common multiple is the larger.
    (BUFFER_ALIGN / gcd(BUFFER_ALIGN, u64::from(max_batch))).max(16)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset in the arena (for max_batch tokens).
    pub offset: u64,
    /// Bytes per token row.
    pub row_bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// Where each activation node's output lives; views (reshapes) share their source's placement.
    pub placements: HashMap<NodeId, Placement>,
    pub arena_bytes: u64,
    /// The sum of all buffers' sizes, what the arena would need without sharing.
    pub unshared_bytes: u64,
}

pub fn run(g: &Graph, schedule: &[NodeId], max_batch: u32) -> MemoryPlan {
    // Lifetime of each root buffer: [defining step, last step that reads it or a view of it].
    let position: HashMap<NodeId, usize> =
        schedule.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut lifetime: HashMap<NodeId, (usize, usize)> = HashMap::new();
    let mut row_bytes: HashMap<NodeId, u64> = HashMap::new();
    for &id in schedule {
        let node = g.node(id);
        if node.op.is_weight() || matches!(node.op, Op::Reshape(_)) {
            continue;
        }
        let per_token = g
            .ty(id)
            .per_token_elements()
            .expect("activations are [T, ...]");
        let align = row_align(max_batch);
        row_bytes.insert(id, (per_token * 4).div_ceil(align) * align);
        // A formed input is written by the product that forms it: it is alive from that step.
        let defined = match node.op {
            Op::FormedInput => position[&g.operands(id)[0]],
            _ => position[&id],
        };
        lifetime.insert(id, (defined, position[&id]));
    }
    for &id in schedule {
        for operand in g.operands(id) {
            let root = g.storage_root(operand);
            if let Some(life) = lifetime.get_mut(&root) {
                life.1 = life.1.max(position[&id]);
            }
        }
    }
    for &out in &g.outputs {
        if let Some(life) = lifetime.get_mut(&g.storage_root(out)) {
            life.1 = schedule.len();
        }
    }

    // Largest first, then earliest: each buffer takes the lowest offset not overlapping any
    // already placed buffer that is alive at the same time.
    let mut order: Vec<NodeId> = lifetime.keys().copied().collect();
    order.sort_by_key(|n| (std::cmp::Reverse(row_bytes[n]), lifetime[n].0, n.index()));
    let mut placed: Vec<(NodeId, u64)> = Vec::new();
    let mut plan = MemoryPlan::default();
    let mut arena_row_bytes = 0;
    for id in order {
        let (size, (start, end)) = (row_bytes[&id], lifetime[&id]);
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|(other, _)| {
                let (s, e) = lifetime[other];
                s <= end && start <= e
            })
            .map(|(other, off)| (*off, off + row_bytes[other]))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (s, e) in busy {
            if offset + size <= s {
                break;
            }
            offset = offset.max(e);
        }
        placed.push((id, offset));
        arena_row_bytes = arena_row_bytes.max(offset + size);
        plan.unshared_bytes += size * u64::from(max_batch);
        plan.placements.insert(
            id,
            Placement {
                offset: offset * u64::from(max_batch),
                row_bytes: size,
            },
        );
    }
    plan.arena_bytes = arena_row_bytes * u64::from(max_batch);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::schedule;

    /// A chain a -> b -> c -> d of equal-size buffers needs only two slots; d reads c only.
    #[test]
    fn reuses_memory_of_dead_values_and_never_overlaps_live_ones() {
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let a = g.add("a", Op::Reshape(vec![1]), &[ids]);
        let b = g.add("b", Op::Scale(2.0), &[a]);
        let c = g.add("c", Op::Scale(3.0), &[b]);
        let d = g.add("d", Op::Scale(4.0), &[c]);
        let e = g.add("e", Op::Add, &[d, c]);
        g.outputs.push(e);
        // Types by hand: the point is lifetimes, not what the ops compute.
        for (n, ty) in [
            (ids, "T"),
            (a, "T,1"),
            (b, "T,1"),
            (c, "T,1"),
            (d, "T,1"),
            (e, "T,1"),
        ] {
            let shape = ty
                .split(',')
                .map(|s| {
                    if s == "T" {
                        crate::ir::Dim::Tokens
                    } else {
                        crate::ir::Dim::Fixed(1)
                    }
                })
                .collect();
            g.dag[n].ty = Some(crate::ir::TensorType::new(shape, crate::ir::DType::F32));
        }
        let order = schedule::run(&g);
        let plan = run(&g, &order, 8);
        let at = |n| plan.placements[&g.storage_root(n)].offset;
        assert_eq!(g.storage_root(a), ids);
        assert_ne!(at(c), at(d), "c is read by e, so d cannot take its place");
        assert_ne!(at(d), at(e));
        assert_ne!(at(c), at(e));
        // Rows of 4 bytes round up to 32, so that 8 of them make a 256-byte aligned buffer.
        assert_eq!(plan.arena_bytes, 3 * 32 * 8);
        assert!(plan
            .placements
            .values()
            .all(|p| p.offset % BUFFER_ALIGN == 0));
        assert!(plan.unshared_bytes > plan.arena_bytes);
    }
}
