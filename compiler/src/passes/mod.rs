//! The compiler's passes, in the order they run.

pub mod constant_fold;
pub mod dce;
pub mod fold_embed_scale;
pub mod fold_rms_norm;
pub mod fuse_attention_output;
pub mod fuse_gated_ffn;
pub mod fuse_post_norm;
pub mod fuse_qkv;
pub mod fuse_residual_add;
pub mod kv_layout;
pub mod memory;
mod pattern;
pub mod schedule;
pub mod shape_inference;

use thiserror::Error;

use crate::gguf::GgufFile;
use crate::ir::{Graph, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Most tokens one sequence holds (its positions).
    pub ctx: u32,
    /// Most new tokens evaluated in one step, over all its sequences.
    pub max_batch: u32,
    /// Tokens the KV cache's page pool holds over all sequences: a whole number of
    /// `llamart::plan::KV_PAGE_TOKENS` pages.
    pub kv_tokens: u32,
    /// Most sequences one step carries.
    pub max_seqs: u32,
    /// Rewrites not to run (`llamac compile --disable-pass`).
    pub disabled: PassSet,
    /// How the KV cache stores its values.
    pub kv_type: llamart::plan::KvType,
}

/// A set of the optional passes of [`REWRITES`], by position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSet(u32);

impl PassSet {
    pub const NONE: PassSet = PassSet(0);

    /// The passes named, each one of [`REWRITES`]; anything else is an error naming the choices.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<PassSet, String> {
        let mut set = PassSet::NONE;
        for name in names {
            let name = name.as_ref();
            let Some(i) = REWRITES.iter().position(|(n, _)| *n == name) else {
                let optional: Vec<&str> = REWRITES.iter().map(|(n, _)| *n).collect();
                let why = if PASSES.contains(&name) {
                    "is required"
                } else {
                    "does not exist"
                };
                return Err(format!(
                    "pass '{name}' {why}; the passes that can be disabled are: {}",
                    optional.join(", ")
                ));
            };
            set.0 |= 1 << i;
        }
        Ok(set)
    }

    pub fn contains(&self, name: &str) -> bool {
        REWRITES
            .iter()
            .position(|(n, _)| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
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
    #[error("KV cache: {0}")]
    Kv(String),
}

/// The graph after every pass, with what the passes decided.
pub struct Compiled {
    pub graph: Graph,
    pub schedule: Vec<NodeId>,
    pub memory: memory::MemoryPlan,
    pub kv: llamart::plan::KvLayout,
    /// The passes that ran, in order.
    pub passes: Vec<&'static str>,
}

/// A pass that rewrites the graph in place and returns how many rewrites it made.
type Rewrite = fn(&mut Graph, &GgufFile) -> Result<usize, PassError>;

/// The optional rewrites, in the order they run: folding, then the fusions, whose order matters:
/// the products are merged before the norms fold into them, so each norm folds into one product;
/// post-norm sums move into the products whose pre-norm was folded; and the attention output is
/// fused last, into the products the others made.
pub const REWRITES: &[(&str, Rewrite)] = &[
    ("constant_fold", constant_fold::run),
    ("fold_embed_scale", |g, _| Ok(fold_embed_scale::run(g))),
    ("fuse_qkv", |g, _| Ok(fuse_qkv::run(g))),
    ("fuse_gated_ffn", |g, _| Ok(fuse_gated_ffn::run(g))),
    ("fuse_residual_add", |g, _| Ok(fuse_residual_add::run(g))),
    ("fold_rms_norm", |g, _| Ok(fold_rms_norm::run(g))),
    ("fuse_post_norm", |g, _| Ok(fuse_post_norm::run(g))),
    ("fuse_attention_output", |g, _| {
        Ok(fuse_attention_output::run(g))
    }),
];

/// Every pass, in the order [`run_pipeline`] runs them: shape inference, the rewrites, then
/// dead-code elimination and the analyses that fix the schedule, the arena and the KV cache.
pub const PASSES: &[&str] = &[
    "shape_inference",
    "constant_fold",
    "fold_embed_scale",
    "fuse_qkv",
    "fuse_gated_ffn",
    "fuse_residual_add",
    "fold_rms_norm",
    "fuse_post_norm",
    "fuse_attention_output",
    "dce",
    "schedule",
    "memory",
    "kv_layout",
];

/// Whether the cache type rules out a rewrite: the fused QKV product stores each key and value
/// pair by pair as it computes them, which a Q8_0 row, scaled per block of 32, cannot take; with
/// that cache the keys and values reach it through a store step that quantizes whole blocks.
fn skipped_for_kv(pass: &str, kv_type: llamart::plan::KvType) -> bool {
    pass == "fuse_qkv" && kv_type == llamart::plan::KvType::Q8_0
}

/// The whole pipeline. Each pass is its own module with its own tests; this list is the only place
/// that orders them.
pub fn run_pipeline(
    graph: Graph,
    file: &GgufFile,
    options: PipelineOptions,
) -> Result<Compiled, PassError> {
    run_pipeline_observed(graph, file, options, &mut |_, _| {})
}

/// [`run_pipeline`], calling `observe(pass, graph)` with the graph after each pass that changes
/// it (per-pass snapshot tests read the graph before and after each pass this way).
pub fn run_pipeline_observed(
    mut graph: Graph,
    file: &GgufFile,
    options: PipelineOptions,
    observe: &mut dyn FnMut(&str, &Graph),
) -> Result<Compiled, PassError> {
    let mut passes = vec!["shape_inference"];
    shape_inference::run(&mut graph)?;
    observe("shape_inference", &graph);
    for &(name, rewrite) in REWRITES {
        if options.disabled.contains(name) || skipped_for_kv(name, options.kv_type) {
            continue;
        }
        if rewrite(&mut graph, file)? > 0 {
            // What a rewrite replaced is dead now; the new nodes get their types, and shape
            // inference checks them: a fusion that built an invalid node fails here, by name.
            dce::run(&mut graph);
            shape_inference::run(&mut graph)?;
        }
        passes.push(name);
        observe(name, &graph);
    }
    dce::run(&mut graph);
    observe("dce", &graph);
    let schedule = schedule::run(&graph);
    let memory = memory::run(&graph, &schedule, options.max_batch);
    let kv = kv_layout::run(&graph, &schedule, options.kv_tokens, options.kv_type)?;
    passes.extend(["dce", "schedule", "memory", "kv_layout"]);
    Ok(Compiled {
        graph,
        schedule,
        memory,
        kv,
        passes,
    })
}
