//! The compiler's intermediate representation: a static DAG of ops from a small closed set.
//!
//! Nodes are ops; an edge `a -> b` with weight `i` says that `a`'s output is `b`'s operand `i`.
//! Weights are graph nodes too (`Op::Weight`), so passes see and can fold everything that depends
//! only on them. Every node has one output tensor whose type is filled in by shape inference.

mod listing;
mod op;

use std::borrow::Cow;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use llamart::GgmlType;

pub use op::{Epilogue, Op, Partials, PartialsInto, UnaryOp};

pub type NodeId = NodeIndex<u32>;

/// A dimension: fixed at compile time, or the number of new tokens in the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(u64),
    Tokens,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Tokens => f.write_str("T"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I32,
    /// Stored in a GGML block format (weights only).
    Ggml(GgmlType),
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DType::F32 => f.write_str("f32"),
            DType::I32 => f.write_str("i32"),
            DType::Ggml(t) => f.write_str(t.name()),
        }
    }
}

/// Shape (row-major, the last dimension contiguous) and element type of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub shape: Vec<Dim>,
    pub dtype: DType,
}

impl TensorType {
    pub fn new(shape: Vec<Dim>, dtype: DType) -> Self {
        TensorType { shape, dtype }
    }

    /// Elements in one token's row: the product of the fixed dimensions, when the leading
    /// dimension is `Tokens` and no other is.
    pub fn per_token_elements(&self) -> Option<u64> {
        match self.shape.split_first() {
            Some((Dim::Tokens, rest)) => rest.iter().try_fold(1u64, |acc, d| match d {
                Dim::Fixed(n) => acc.checked_mul(*n),
                Dim::Tokens => None,
            }),
            _ => None,
        }
    }

    /// The product of all dimensions, when all are fixed.
    pub fn fixed_elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, d| match d {
            Dim::Fixed(n) => acc.checked_mul(*n),
            Dim::Tokens => None,
        })
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(", "))
    }
}

/// Where a weight's bytes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightData {
    /// A tensor of the GGUF file, by name, stored as it is there.
    Gguf(String),
    /// Values computed at compile time (by constant folding), stored as f32.
    Computed(Vec<f32>),
    /// Weights of the same type and row length stacked row after row (the fusion passes merge
    /// products this way); the bytes are the parts' bytes back to back, so nothing is requantized.
    Concat(Vec<WeightData>),
}

impl WeightData {
    /// The stored bytes: borrowed from the file where they are there unchanged. `Err` names a
    /// tensor the file lacks (lowering checked them, so only a pass bug gets there).
    pub fn bytes<'a>(&self, file: &'a crate::gguf::GgufFile) -> Result<Cow<'a, [u8]>, String> {
        Ok(match self {
            WeightData::Gguf(name) => Cow::Borrowed(
                file.tensor_data(
                    file.tensor(name)
                        .ok_or_else(|| format!("tensor '{name}' is not in the file"))?,
                ),
            ),
            WeightData::Computed(values) => Cow::Owned(bytemuck::cast_slice(values).to_vec()),
            WeightData::Concat(parts) => {
                let mut bytes = Vec::new();
                for part in parts {
                    bytes.extend_from_slice(&part.bytes(file)?);
                }
                Cow::Owned(bytes)
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    /// Filled in by shape inference; `None` before it runs.
    pub ty: Option<TensorType>,
    /// A readable name for listings and errors (`blk.3.attn_q`).
    pub name: String,
}

/// The op DAG plus its outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub dag: StableDiGraph<Node, u8, u32>,
    /// Nodes whose values leave the graph: the logits.
    pub outputs: Vec<NodeId>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node taking `operands` in order.
    pub fn add(&mut self, name: impl Into<String>, op: Op, operands: &[NodeId]) -> NodeId {
        let id = self.dag.add_node(Node {
            op,
            ty: None,
            name: name.into(),
        });
        for (i, &src) in operands.iter().enumerate() {
            self.dag.add_edge(src, id, i as u8);
        }
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    /// Operands of `id`, in operand order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u8, NodeId)> = self
            .dag
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use `id`'s output.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self
            .dag
            .neighbors_directed(id, Direction::Outgoing)
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// The inferred type of `id`; passes after shape inference may rely on it.
    pub fn ty(&self, id: NodeId) -> &TensorType {
        self.dag[id].ty.as_ref().expect("shape inference has run")
    }

    /// Makes every user of `old` use `new` instead (same operand positions).
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, u8, petgraph::stable_graph::EdgeIndex<u32>)> = self
            .dag
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight(), e.id()))
            .collect();
        for (user, slot, edge) in uses {
            self.dag.remove_edge(edge);
            self.dag.add_edge(new, user, slot);
        }
        for out in &mut self.outputs {
            if *out == old {
                *out = new;
            }
        }
    }

    /// Node ids in index order (stable across runs for the same construction order).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.dag.node_indices().collect()
    }

    /// The node whose buffer `id` lives in: itself, or for a reshape (a view), its source's.
    pub fn storage_root(&self, mut id: NodeId) -> NodeId {
        while matches!(self.node(id).op, Op::Reshape(_)) {
            id = self.operands(id)[0];
        }
        id
    }

    /// (KV heads, head dim) of the cache attention node `id` reads: from its k operand, or when
    /// q is its only operand, from the fused product that stores k and v.
    pub fn attention_kv_heads(&self, id: NodeId) -> Option<(u64, u64)> {
        let operands = self.operands(id);
        if let [_, k, _] = operands[..] {
            return match self.node(k).ty.as_ref()?.shape[..] {
                [Dim::Tokens, Dim::Fixed(h), Dim::Fixed(d)] => Some((h, d)),
                _ => None,
            };
        }
        match self.node(self.storage_root(*operands.first()?)).op {
            Op::FusedMatMul {
                epilogue:
                    Epilogue::RopeKv {
                        n_kv_head,
                        head_dim,
                        ..
                    },
                ..
            } => Some((n_kv_head.into(), head_dim.into())),
            _ => None,
        }
    }

    pub fn listing(&self, order: Option<&[NodeId]>) -> String {
        listing::render(self, order)
    }

    /// The graph in Graphviz DOT.
    pub fn dot(&self) -> String {
        listing::dot(self)
    }
}
