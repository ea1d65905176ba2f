use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llamac::gguf::GgufFile;

/// llamac: compiles GGUF language models ahead of time into llamart execution plans.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a GGUF file holds: architecture, hyperparameters, tokenizer and tensors.
    Inspect {
        /// The GGUF model file.
        model: PathBuf,
        /// Print one JSON object instead of text: {"version", "architecture", "metadata",
        /// "tensors": [{"name", "type", "shape", "bytes", "offset"}], ...}. Arrays longer than 64
        /// items are summarized as {"type": "array", "element_type", "len", "head"}.
        #[arg(long)]
        json: bool,
    },
    /// Compile a GGUF model into an execution plan for llamart.
    Compile {
        /// The GGUF model file.
        model: PathBuf,
        /// Where to write the plan.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Most tokens one sequence holds (default: the model's training context, at most 4096).
        #[arg(long)]
        ctx: Option<u32>,
        /// Most tokens evaluated in one step, over all its sequences; longer prompts run in
        /// chunks.
        #[arg(long = "batch", default_value_t = llamac::compile::DEFAULT_MAX_BATCH)]
        batch: u32,
        /// Tokens the KV cache holds over all sequences, as a pool of 32-token pages that the
        /// sequences share (default: --ctx). Its bytes are allocated at load.
        #[arg(long = "kv-tokens")]
        kv_tokens: Option<u32>,
        /// Most sequences evaluated together in one step (`llamart bench --parallel`, the server).
        #[arg(long = "max-seqs", default_value_t = llamart::plan::DEFAULT_MAX_SEQS)]
        max_seqs: u32,
        /// Also emit an intermediate form: `graph` prints the compiled op graph to stdout (one line
        /// per op, in schedule order), `dot` the same graph in Graphviz DOT, `plan` the plan's
        /// readable header (RON); `wgsl DIR` and `msl DIR` write every GPU kernel (Metal Shading
        /// Language through naga, with `[[buffer(n)]]` slots) into DIR.
        #[arg(long, num_args = 1..=2, value_names = ["KIND", "DIR"])]
        emit: Vec<String>,
        /// How matrix products take their activations on the CPU (the GPU always multiplies
        /// f32): `q8x2` rounds them to 8 bits as llama.cpp does and adds the rounding residual as
        /// a second 8-bit term, both multiplied with integer dot products (about 15-bit
        /// activations); `q8` takes the one 8-bit term (llama.cpp's arithmetic: fastest, with its
        /// rounding noise); `f32` keeps them in f32, so the CPU and the GPU compute the same
        /// function. Weight types without an integer kernel always multiply f32.
        #[arg(long, default_value = "q8x2", value_parser = llamart::plan::Activations::NAMES)]
        activations: String,
        /// How the KV cache stores keys and values, on both backends: `f16` (llama.cpp's default;
        /// half the bytes of `f32`), `f32`, or `q8_0` (8-bit blocks of 32 with an f16 scale, about
        /// a quarter of `f32`; its keys and values go through a store step, so the QKV fusion
        /// does not run).
        #[arg(long = "kv-type", default_value = "f16", value_parser = llamart::plan::KvType::NAMES)]
        kv_type: String,
        /// Memory bandwidth in GB/s: the report then gives the decode roofline, tokens/s.
        #[arg(long, value_name = "GBPS")]
        bandwidth: Option<f64>,
        /// Also write the compile report as JSON to FILE (keys include
        /// dispatches_per_decode_token, dispatches_per_layer, weight_bytes,
        /// bytes_read_per_decode_token, flops_per_decode_token, arena_bytes, kv_bytes, passes).
        #[arg(long = "report-json", value_name = "FILE")]
        report_json: Option<PathBuf>,
        /// Do not run optimization pass NAME (repeatable): constant_fold, fold_embed_scale,
        /// fuse_qkv, fuse_gated_ffn, fuse_residual_add, fold_rms_norm, fuse_post_norm or
        /// fuse_attention_output. The plan computes the same logits with more steps; for
        /// comparing and debugging the fusions.
        #[arg(long = "disable-pass", value_name = "NAME")]
        disable_pass: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamac: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let file =
                GgufFile::open(&model).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
            let text = if json {
                serde_json::to_string_pretty(&llamac::inspect::to_json(&file))? + "\n"
            } else {
                llamac::inspect::render_text(&file)
            };
            write_stdout(&text)
        }
        Command::Compile {
            model,
            output,
            ctx,
            batch,
            kv_tokens,
            max_seqs,
            emit,
            activations,
            kv_type,
            bandwidth,
            report_json,
            disable_pass,
        } => {
            let disabled = llamac::passes::PassSet::from_names(&disable_pass)
                .map_err(|e| anyhow::anyhow!("--disable-pass: {e}"))?;
            if let Some(b) = bandwidth {
                if !(b.is_finite() && b > 0.0) {
                    anyhow::bail!("--bandwidth must be a positive number of GB/s, not {b}");
                }
            }
            let emit = match emit.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                [] => None,
                [kind @ ("graph" | "dot" | "plan")] => Some((kind, None)),
                [kind @ ("wgsl" | "msl"), dir] => Some((kind, Some(PathBuf::from(dir)))),
                [kind @ ("wgsl" | "msl")] => {
                    anyhow::bail!("--emit {kind} needs a directory: --emit {kind} DIR")
                }
                _ => anyhow::bail!(
                    "--emit takes `graph`, `dot`, `plan`, `wgsl DIR` or `msl DIR`, not {:?}",
                    emit.join(" ")
                ),
            };
            let options = llamac::compile::CompileOptions {
                ctx,
                max_batch: batch,
                kv_tokens,
                max_seqs,
                activations: activations.parse().map_err(anyhow::Error::msg)?,
                kv_type: kv_type.parse().map_err(anyhow::Error::msg)?,
                bandwidth_gbps: bandwidth,
                disabled,
            };
            let summary = llamac::compile::compile(&model, &output, options)?;
            match emit {
                Some((kind @ ("graph" | "dot"), _)) => {
                    let file = GgufFile::open(&model)?;
                    let pipeline = llamac::passes::PipelineOptions {
                        ctx: summary.ctx,
                        max_batch: summary.max_batch,
                        kv_tokens: summary.kv_tokens,
                        max_seqs: summary.max_seqs,
                        disabled,
                        kv_type: summary.kv_type,
                    };
                    write_stdout(&if kind == "dot" {
                        llamac::compile::graph_dot(&file, pipeline)?
                    } else {
                        llamac::compile::graph_listing(&file, pipeline)?
                    })?;
                }
                Some(("plan", _)) => {
                    let plan = llamart::plan::LoadedPlan::open(&output)?;
                    write_stdout(&(plan.header_text() + "\n"))?;
                }
                Some((kind, Some(dir))) => {
                    let plan = llamart::plan::LoadedPlan::open(&output)?;
                    std::fs::create_dir_all(&dir)?;
                    for (i, k) in plan.header.gpu.kernels.iter().enumerate() {
                        let (text, ext) = if kind == "msl" {
                            (
                                llamac::wgsl::to_msl(&k.wgsl)
                                    .map_err(|e| anyhow::anyhow!("kernel {}: {e}", k.label))?,
                                "metal",
                            )
                        } else {
                            (k.wgsl.clone(), "wgsl")
                        };
                        std::fs::write(dir.join(format!("{i:03}_{}.{ext}", k.label)), text)?;
                    }
                    eprintln!(
                        "llamac: wrote {} {kind} kernels to {}",
                        plan.header.gpu.kernels.len(),
                        dir.display()
                    );
                }
                _ => {}
            }
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            eprintln!(
                "llamac: wrote {} ({:.1} MiB) in {:.2} s: {} steps, {} weights ({:.1} MiB), arena {:.1} MiB \
                 (unshared {:.1} MiB), KV cache {:.1} MiB ({}) for {} tokens in pages of {} (context {} a sequence), \
                 batch {} tokens of at most {} sequences",
                output.display(),
                mib(summary.plan_bytes),
                summary.seconds,
                summary.steps,
                summary.weights,
                mib(summary.weight_bytes),
                mib(summary.arena_bytes),
                mib(summary.arena_unshared_bytes),
                mib(summary.kv_bytes),
                summary.kv_type,
                summary.kv_tokens,
                llamart::plan::KV_PAGE_TOKENS,
                summary.ctx,
                summary.max_batch,
                summary.max_seqs
            );
            eprint!("{}", summary.report.render());
            if let Some(path) = report_json {
                let json = serde_json::to_string_pretty(&summary.report)? + "\n";
                std::fs::write(&path, json)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// Writes to stdout; a reader that went away (`llamac inspect m.gguf | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
