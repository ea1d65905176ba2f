//! `llamac compile`: GGUF -> op graph -> passes -> plan file.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::gguf::GgufFile;
use crate::passes::{PassSet, PipelineOptions};
use llamart::plan::{Activations, KvType};

#[derive(Clone, Copy, Debug)]
pub struct CompileOptions {
    /// KV cache length; defaults to the model's training context, capped at `DEFAULT_MAX_CTX`.
    pub ctx: Option<u32>,
    pub max_batch: u32,
    /// Tokens the KV cache's page pool holds over all sequences (default: `ctx`); rounded up to
    /// whole pages.
    pub kv_tokens: Option<u32>,
    /// Most sequences one step carries.
    pub max_seqs: u32,
    /// How the plan's matrix products take their activations.
    pub activations: Activations,
    /// How the KV cache stores its values.
    pub kv_type: KvType,
    /// Memory bandwidth for the report's roofline, GB/s.
    pub bandwidth_gbps: Option<f64>,
    /// Optional passes not to run.
    pub disabled: PassSet,
}

/// Default KV cache length when `--ctx` is not given: enough for chat, small enough to allocate
/// everywhere.
pub const DEFAULT_MAX_CTX: u32 = 4096;
pub const DEFAULT_MAX_BATCH: u32 = 128;

/// What a compile produced, for the report.
#[derive(Debug)]
pub struct CompileSummary {
    pub steps: usize,
    pub weights: usize,
    pub weight_bytes: u64,
    pub arena_bytes: u64,
    pub arena_unshared_bytes: u64,
    pub kv_bytes: u64,
    pub kv_type: KvType,
    pub plan_bytes: u64,
    pub ctx: u32,
    pub max_batch: u32,
    pub kv_tokens: u32,
    pub max_seqs: u32,
    pub seconds: f64,
    pub report: crate::report::Report,
}

pub fn compile(
    input: &Path,
    output: &Path,
    options: CompileOptions,
) -> anyhow::Result<CompileSummary> {
    let start = Instant::now();
    let file = GgufFile::open(input).with_context(|| format!("{}", input.display()))?;
    let (graph, hp) =
        crate::lower::lower(&file).with_context(|| format!("lowering {}", input.display()))?;
    let ctx = match options.ctx {
        Some(0) => anyhow::bail!("--ctx must be at least 1"),
        Some(c) if u64::from(c) > hp.n_ctx_train => {
            anyhow::bail!(
                "--ctx {c} exceeds the model's training context of {} tokens",
                hp.n_ctx_train
            )
        }
        Some(c) => c,
        None => (hp.n_ctx_train as u32).min(DEFAULT_MAX_CTX),
    };
    if options.max_batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    if options.max_seqs == 0 {
        anyhow::bail!("--max-seqs must be at least 1");
    }
    let page = llamart::plan::KV_PAGE_TOKENS;
    let kv_tokens = match options.kv_tokens {
        Some(0) => anyhow::bail!("--kv-tokens must be at least 1"),
        Some(n) => n,
        None => ctx,
    }
    .checked_next_multiple_of(page)
    .context("--kv-tokens is too large")?;
    let max_batch = options.max_batch.min(ctx.max(options.max_seqs));
    let pipeline = PipelineOptions {
        ctx,
        max_batch,
        kv_tokens,
        max_seqs: options.max_seqs.min(max_batch),
        disabled: options.disabled,
        kv_type: options.kv_type,
    };
    let compiled = crate::passes::run_pipeline(graph, &file, pipeline)?;
    let emitted = crate::emit::emit(&compiled, &file, &hp, pipeline, options.activations)?;
    let report = crate::report::report(
        &emitted.header,
        &emitted.step_names,
        &compiled.passes,
        options.bandwidth_gbps,
    );
    let tokenizer =
        crate::tokenizer::tokenizer_from_gguf(&file).context("reading the tokenizer")?;
    let tokenizer_json = serde_json::to_vec(&tokenizer)?;
    let plan_bytes = llamart::plan::PlanWriter::write(
        output,
        &emitted.header,
        &tokenizer_json,
        emitted.weights.iter().map(|w| w.as_ref()),
    )
    .with_context(|| format!("writing {}", output.display()))?;
    Ok(CompileSummary {
        steps: emitted.header.steps.len(),
        weights: emitted.header.weights.len(),
        weight_bytes: emitted.header.weights.iter().map(|w| w.bytes).sum(),
        arena_bytes: compiled.memory.arena_bytes,
        arena_unshared_bytes: compiled.memory.unshared_bytes,
        kv_bytes: compiled.kv.bytes,
        kv_type: compiled.kv.ty,
        plan_bytes,
        ctx,
        max_batch: pipeline.max_batch,
        kv_tokens,
        max_seqs: pipeline.max_seqs,
        seconds: start.elapsed().as_secs_f64(),
        report,
    })
}

/// The model lowered and run through every pass.
fn compiled_graph(
    input: &GgufFile,
    options: PipelineOptions,
) -> anyhow::Result<crate::passes::Compiled> {
    let (graph, _) = crate::lower::lower(input)?;
    Ok(crate::passes::run_pipeline(graph, input, options)?)
}

/// The compiled graph as text, for `--emit graph` and snapshot tests.
pub fn graph_listing(input: &GgufFile, options: PipelineOptions) -> anyhow::Result<String> {
    let compiled = compiled_graph(input, options)?;
    Ok(compiled.graph.listing(Some(&compiled.schedule)))
}

/// The compiled graph in Graphviz DOT, for `--emit dot`.
pub fn graph_dot(input: &GgufFile, options: PipelineOptions) -> anyhow::Result<String> {
    Ok(compiled_graph(input, options)?.graph.dot())
}
