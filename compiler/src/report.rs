//! The compile report: what the plan will cost per token, derived from the plan itself, so it
//! states what the runtime replays rather than what the graph looked like before emission.

use std::collections::BTreeMap;

use llamart::plan::{Epilogue, Kernel, PartialsInto, PlanHeader};
use serde::Serialize;

/// Everything `llamac compile` prints and `--report-json` writes. The key names are an interface:
/// scripts read them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The passes that ran, in order.
    pub passes: Vec<String>,
    /// Steps of the schedule by kernel.
    pub op_counts: BTreeMap<String, usize>,
    pub steps: usize,
    pub gpu_kernels: usize,
    /// GPU dispatches of one decode step, the argmax (or top-k) dispatch included.
    pub dispatches_per_decode_token: usize,
    /// GPU dispatches of one prefill chunk of up to `max_batch` tokens: the same dispatches over
    /// larger grids.
    pub dispatches_per_prefill_chunk: usize,
    /// The most dispatches any transformer layer takes.
    pub dispatches_per_layer: usize,
    /// Dispatches outside the layers (embedding, final norm, head, argmax).
    pub dispatches_outside_layers: usize,
    pub weight_bytes: u64,
    /// Bytes one decode step reads: every weight a product reads, one row of each embedding
    /// table, and the step's activation inputs. The KV cache reads grow with the position and are
    /// given by `kv_bytes_per_token` (read once per cached token per step).
    pub bytes_read_per_decode_token: u64,
    /// Floating-point operations of one decode step at the first position (a multiply-add counts
    /// two); attention adds `attention_flops_per_cached_token` for every cached token.
    pub flops_per_decode_token: u64,
    pub attention_flops_per_cached_token: u64,
    pub arena_bytes: u64,
    pub kv_bytes: u64,
    pub kv_bytes_per_token: u64,
    /// How the cache stores keys and values: `f16`, `f32` or `q8_0`.
    pub kv_type: String,
    pub ctx: u32,
    pub max_batch: u32,
    /// The KV cache's page pool: tokens over all sequences, pages, and the most sequences a step
    /// carries.
    pub kv_tokens: u32,
    pub kv_pages: u32,
    pub max_seqs: u32,
    /// Memory a session holds when it decodes with the cache's pool full (`kv_tokens` tokens):
    /// the weights (mapped, every page read per token), the arena (whole after any prefill chunk)
    /// and the KV cache rows of `kv_tokens` tokens. The KV cache and the arena are allocated zeroed and become
    /// resident as they are written, so a shorter context holds `kv_bytes_per_token` less per
    /// token. The runtime's own scratch (quantized activations, per-thread rows) comes on top.
    pub resident_bytes_at_ctx: u64,
    /// `bandwidth / bytes_read_per_decode_token`, when a bandwidth was given.
    pub bandwidth_gbps: Option<f64>,
    pub roofline_tokens_per_second: Option<f64>,
}

/// The report of `header`, whose step `i` computes the graph node named `step_names[i]`.
pub fn report(
    header: &PlanHeader,
    step_names: &[String],
    passes: &[&str],
    bandwidth_gbps: Option<f64>,
) -> Report {
    let mut op_counts = BTreeMap::new();
    let mut flops = 0u64;
    let mut attention_flops_per_cached_token = 0u64;
    for step in &header.steps {
        *op_counts
            .entry(kernel_name(&step.kernel).to_string())
            .or_insert(0) += 1;
        let (step_flops, per_cached) = flops_of(&step.kernel);
        flops += step_flops;
        attention_flops_per_cached_token += per_cached;
    }
    let bytes_read = header.bytes_read_per_decode_token();
    let weight_bytes = header.weights.iter().map(|w| w.bytes).sum::<u64>();

    let layer_of =
        |name: &str| -> Option<u32> { name.strip_prefix("blk.")?.split('.').next()?.parse().ok() };
    let mut per_layer: BTreeMap<u32, usize> = BTreeMap::new();
    let mut outside = 1; // the argmax / top-k dispatch
    for d in &header.gpu.dispatches {
        match step_names.get(d.step as usize).and_then(|n| layer_of(n)) {
            Some(layer) => *per_layer.entry(layer).or_insert(0) += 1,
            None => outside += 1,
        }
    }
    let dispatches = header.gpu.dispatches.len() + 1;
    let ctx = header.limits.ctx;
    Report {
        passes: passes.iter().map(|p| p.to_string()).collect(),
        op_counts,
        steps: header.steps.len(),
        gpu_kernels: header.gpu.kernels.len(),
        dispatches_per_decode_token: dispatches,
        dispatches_per_prefill_chunk: dispatches,
        dispatches_per_layer: per_layer.values().copied().max().unwrap_or(0),
        dispatches_outside_layers: outside,
        weight_bytes,
        bytes_read_per_decode_token: bytes_read,
        flops_per_decode_token: flops,
        attention_flops_per_cached_token,
        arena_bytes: header.arena.bytes,
        kv_bytes: header.kv.bytes,
        kv_bytes_per_token: header.kv.bytes / u64::from(header.limits.kv_tokens.max(1)),
        kv_type: header.kv.ty.to_string(),
        resident_bytes_at_ctx: weight_bytes + header.arena.bytes + header.kv.bytes,
        ctx,
        max_batch: header.limits.max_batch,
        kv_tokens: header.limits.kv_tokens,
        kv_pages: header.limits.kv_pages(),
        max_seqs: header.limits.max_seqs,
        bandwidth_gbps,
        roofline_tokens_per_second: bandwidth_gbps
            .map(|gbps| gbps * 1e9 / bytes_read.max(1) as f64),
    }
}

fn kernel_name(k: &Kernel) -> &'static str {
    match k {
        Kernel::Embed { .. } => "embed",
        Kernel::RmsNorm { .. } => "rms_norm",
        Kernel::MatMul { .. } => "matmul",
        Kernel::Add { .. } => "add",
        Kernel::Mul { .. } => "mul",
        Kernel::Scale { .. } => "scale",
        Kernel::Unary { .. } => "unary",
        Kernel::Rope { .. } => "rope",
        Kernel::Attention { .. } => "attention",
        Kernel::FusedMatMul { .. } => "fused_matmul",
        Kernel::AttentionProject { .. } => "attention_project",
    }
}

/// FLOPs of one token through `k`, and the attention FLOPs added per cached token.
fn flops_of(k: &Kernel) -> (u64, u64) {
    let n = |x: &u32| u64::from(*x);
    match k {
        Kernel::Embed { .. } => (0, 0),
        Kernel::RmsNorm { n: len, groups, .. } => (4 * n(len) * n(groups), 0),
        Kernel::MatMul { k, n: rows } => (2 * n(k) * n(rows), 0),
        Kernel::AttentionProject {
            n_head,
            head_dim,
            n: rows,
            ..
        } => {
            let per_token = 4 * n(n_head) * n(head_dim);
            (per_token + 2 * n(n_head) * n(head_dim) * n(rows), per_token)
        }
        Kernel::FusedMatMul {
            k,
            n: rows,
            post_norm,
            norm,
            epilogue,
            partials,
            ..
        } => {
            let parts = partials.map_or(0, |p| {
                n(&p.count)
                    * match p.into {
                        PartialsInto::Input => n(k),
                        PartialsInto::Residual => n(rows),
                    }
            });
            let prologue = parts
                + if post_norm.is_some() { 5 * n(k) } else { 0 }
                + if norm.is_some() { 4 * n(k) } else { 0 };
            let out = u64::from(epilogue.output_len(*rows));
            let epilogue = match epilogue {
                Epilogue::Store => 0,
                Epilogue::Add => out,
                Epilogue::Glu(_) => 11 * out,
                Epilogue::RopeKv {
                    n_head,
                    n_kv_head,
                    head_dim,
                    n_rot,
                    bias,
                    qk_norm,
                    ..
                } => {
                    let heads = n(n_head) + n(n_kv_head);
                    3 * heads * n(n_rot)
                        + if *bias { n(rows) } else { 0 }
                        + if qk_norm.is_some() {
                            4 * heads * n(head_dim)
                        } else {
                            0
                        }
                }
            };
            (prologue + 2 * n(k) * n(rows) + epilogue, 0)
        }
        Kernel::Add { n: len, .. } | Kernel::Mul { n: len, .. } | Kernel::Scale { n: len, .. } => {
            (n(len), 0)
        }
        // An activation function costs about ten operations per value.
        Kernel::Unary { n: len, .. } => (10 * n(len), 0),
        Kernel::Rope { n_head, n_rot, .. } => (3 * n(n_head) * n(n_rot), 0),
        // Scores (q . k) and the weighted sum of values: two multiply-adds per dimension per
        // head per attended token; the new token attends to itself at the first position.
        Kernel::Attention {
            n_head, head_dim, ..
        } => {
            let per_token = 4 * n(n_head) * n(head_dim);
            (per_token, per_token)
        }
    }
}

impl Report {
    /// The report as the lines `llamac compile` prints.
    pub fn render(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let ops = self
            .op_counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = format!(
            "passes: {}\n\
             ops: {} steps ({ops}); {} GPU kernels\n\
             dispatches: {} per decode token, {} per prefill chunk, {} per layer (most), {} outside the layers\n\
             weights: {:.1} MiB; read per decode token: {:.1} MiB ({:.3}x the weights); {:.1} MFLOP per decode token (+{} FLOP per cached token)\n\
             arena: {:.1} MiB; KV cache: {:.1} MiB ({}), a pool of {} tokens in {} pages ({} bytes per token); context {} tokens a sequence; batch {} tokens of at most {} sequences\n\
             resident when decoding with the pool full: {:.1} MiB (weights, arena, KV cache; {} bytes less per token short of {})\n",
            self.passes.join(", "),
            self.steps,
            self.gpu_kernels,
            self.dispatches_per_decode_token,
            self.dispatches_per_prefill_chunk,
            self.dispatches_per_layer,
            self.dispatches_outside_layers,
            mib(self.weight_bytes),
            mib(self.bytes_read_per_decode_token),
            self.bytes_read_per_decode_token as f64 / self.weight_bytes.max(1) as f64,
            self.flops_per_decode_token as f64 / 1e6,
            self.attention_flops_per_cached_token,
            mib(self.arena_bytes),
            mib(self.kv_bytes),
            self.kv_type,
            self.kv_tokens,
            self.kv_pages,
            self.kv_bytes_per_token,
            self.ctx,
            self.max_batch,
            self.max_seqs,
            mib(self.resident_bytes_at_ctx),
            self.kv_bytes_per_token,
            self.kv_tokens,
        );
        if let (Some(gbps), Some(tps)) = (self.bandwidth_gbps, self.roofline_tokens_per_second) {
            out += &format!(
                "roofline: {tps:.0} tokens/s at {gbps} GB/s (decode, cache reads not counted)\n"
            );
        }
        out
    }
}
