//! The compiler's passes, in the order they run.

pub mod constant_fold;
pub mod dce;
pub mod kv_layout;
pub mod memory;
pub mod schedule;
pub mod shape_inference;

use thiserror::Error;

use crate::gguf::GgufFile;
use crate::ir::{Graph, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Tokens the KV cache holds.
    pub ctx: u32,
    /// Most new tokens evaluated in one step.
    pub max_batch: u32,
}

#[derive(Debug, Error)]
pub enum PassError {
    #[error("shape inference: node '{node}' ({op}): {why}")]
    Shape {
        node: String,
        op: &'static str,
        why: String,
    },
    #[error("constant folding: {0}")]
    Fold(String),
}

/// The graph after every pass, with what the passes decided.
pub struct Compiled {
    pub graph: Graph,
    pub schedule: Vec<NodeId>,
    pub memory: memory::MemoryPlan,
    pub kv: llamart::plan::KvLayout,
}

/// The passes [`run_pipeline`] runs, by module name, in its order (for the compile report).
pub const PASSES: &[&str] = &[
    "shape_inference",
    "constant_fold",
    "dce",
    "schedule",
    "memory",
    "kv_layout",
];

/// The whole pipeline. Each pass is its own module with its own tests; this list is the only place
/// that orders them.
pub fn run_pipeline(
    mut graph: Graph,
    file: &GgufFile,
    options: PipelineOptions,
) -> Result<Compiled, PassError> {
    shape_inference::run(&mut graph)?;
    constant_fold::run(&mut graph, file)?;
    dce::run(&mut graph);
    let schedule = schedule::run(&graph);
    let memory = memory::run(&graph, &schedule, options.max_batch);
    let kv = kv_layout::run(&graph, &schedule, options.ctx);
    Ok(Compiled {
        graph,
        schedule,
        memory,
        kv,
    })
}
