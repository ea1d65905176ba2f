use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use llamart::cpu::Session;
use llamart::engine::BatchEvaluator;
use llamart::eval::{self, Evaluator};
use llamart::gpu::GpuSession;
use llamart::plan::LoadedPlan;
use llamart::sampling::{Sampler, SamplingParams};
use llamart::tokenizer::{Detokenizer, Tokenizer};
use serde_json::json;

/// llamart: runs execution plans compiled by llamac.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt, streamed to stdout.
    Run {
        plan: PathBuf,
        /// The prompt. Special-token text such as <|im_start|> is parsed as special tokens.
        #[arg(short = 'p', long = "prompt")]
        prompt: String,
        /// Most tokens to generate.
        #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
        n_predict: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Keep generating past end-of-generation tokens.
        #[arg(long)]
        ignore_eos: bool,
        /// Stop when the text contains TEXT (repeatable); TEXT itself is not printed, even when it
        /// arrives split across tokens.
        #[arg(long = "stop", value_name = "TEXT")]
        stop: Vec<String>,
        /// Constrain the output to JSON that validates against the JSON Schema in FILE.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["regex", "grammar"])]
        json_schema: Option<PathBuf>,
        /// Constrain the output to text that matches the regular expression RE as a whole.
        #[arg(long, value_name = "RE", conflicts_with = "grammar")]
        regex: Option<String>,
        /// Constrain the output to the Lark grammar in FILE (as llguidance reads Lark; it takes
        /// much of llama.cpp's GBNF too).
        #[arg(long, value_name = "FILE")]
        grammar: Option<PathBuf>,
        /// Print one JSON object {"prompt_ids", "ids", "text", "timings"} instead of streaming.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        exec: Exec,
    },
    /// Chat in the terminal: each line read is a user message; the model's chat template (from
    /// the plan) turns the conversation into its prompt, and the reply streams to stdout. Earlier
    /// turns stay in the KV cache's pages and are not recomputed. Commands: /system TEXT, /clear,
    /// /help, /quit (or Ctrl-D); Ctrl-C stops the current answer. Reads one message a line from
    /// a pipe too.
    Chat {
        plan: PathBuf,
        /// A system message to start the conversation with.
        #[arg(long)]
        system: Option<String>,
        /// Most tokens in one reply.
        #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
        n_predict: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[command(flatten)]
        exec: Exec,
    },
    /// Serve an OpenAI-compatible HTTP API: POST /v1/chat/completions and /v1/completions
    /// (streamed or not), GET /v1/models, /health (200 when ready, 503 while loading),
    /// /metrics (Prometheus), and llama-server's POST /tokenize and /detokenize. All requests share one engine: their sequences run in the same
    /// steps. SIGINT or SIGTERM stops accepting, lets running requests finish (up to
    /// --shutdown-grace seconds) and exits 0.
    Serve {
        plan: PathBuf,
        /// Address to listen on; loopback unless told otherwise.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port to listen on (0: any free port; the address is printed on stderr).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Require `Authorization: Bearer KEY` on every route but /health and /metrics (default:
        /// $LLAMART_API_KEY if set).
        #[arg(long, env = "LLAMART_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Sequences that may wait beyond the plan's --max-seqs running ones; past that, 429.
        #[arg(long, default_value_t = 256)]
        max_queue: usize,
        /// Largest request body accepted, in bytes (413 past it).
        #[arg(long, default_value_t = 8 << 20)]
        max_body: usize,
        /// Seconds a shutdown lets running requests finish before ending them.
        #[arg(long, default_value_t = 10)]
        shutdown_grace: u64,
        #[command(flatten)]
        exec: Exec,
    },
    /// Print the token ids of TEXT as a JSON array (with BOS when the model adds one).
    Tokenize {
        plan: PathBuf,
        text: String,
        /// Parse special-token text such as <|im_start|> as special tokens.
        #[arg(long)]
        special: bool,
    },
    /// Evaluate ids as one sequence; print one JSON line per position:
    /// {"pos", "top": [[id, logit], ...], "lse"}.
    Logits {
        plan: PathBuf,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
        /// How many of the largest logits to list per position.
        #[arg(long, default_value_t = 64)]
        top: usize,
        #[command(flatten)]
        exec: Exec,
    },
    /// Perplexity of a text file with llama.cpp's method; the last line is `perplexity: X`.
    Perplexity {
        plan: PathBuf,
        /// The text file (one trailing newline is dropped).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Tokens per chunk.
        #[arg(long = "ctx", default_value_t = 512)]
        ctx: usize,
        /// Score at most this many chunks.
        #[arg(long)]
        chunks: Option<usize>,
        #[command(flatten)]
        exec: Exec,
    },
    /// Print the plan's readable part.
    Inspect { plan: PathBuf },
    /// Measure prompt processing (pp) and generation (tg) speed, llama-bench style.
    Bench {
        plan: PathBuf,
        /// Prompt tokens for the pp test (0 skips it).
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Generated tokens for the tg test (0 skips it).
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        /// Tokens already in the KV cache when each test starts (filled before the clock starts),
        /// as llama-bench's -d.
        #[arg(short = 'd', long = "depth", default_value_t = 0)]
        depth: usize,
        /// Measured repetitions (after one warm-up).
        #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
        reps: usize,
        /// Run N sequences together, as llama.cpp's llama-batched-bench does (CPU): pp reads N
        /// prompts of -p tokens, tg then decodes -n tokens of each, one step per round; both
        /// report aggregate tokens/s. At most the plan's --max-seqs, and N x (p + n) tokens must
        /// fit the plan's KV pool.
        #[arg(long = "parallel", value_name = "N")]
        parallel: Option<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        exec: Exec,
    },
    /// Prints whether a hardware GPU adapter exists ("hardware" or "none"): `--backend auto` asks
    /// this of a child process.
    #[command(hide = true)]
    ProbeGpu,
}

#[derive(Args)]
struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    presence_penalty: f32,
    /// Recent tokens the penalties consider.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed: the same seed gives the same text.
    #[arg(long = "seed", default_value_t = 0x5eed)]
    seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> anyhow::Result<SamplingParams> {
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.repeat_last_n,
            seed: self.seed,
            logit_bias: Vec::new(),
        };
        params.validate().map_err(anyhow::Error::msg)?;
        Ok(params)
    }
}

/// Where to run: `auto` takes a hardware GPU when one is present (software adapters such as
/// lavapipe are correct but slower than the CPU interpreter), else the CPU.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Args)]
struct Exec {
    /// Worker threads (CPU backend).
    #[arg(short = 't', long = "threads", default_value_t = default_threads())]
    threads: usize,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
}

/// When the process started: load times run from here to the evaluator being ready, so they
/// include the GPU probe, opening the plan and the session's allocations.
static PROCESS_START: OnceLock<Instant> = OnceLock::new();

fn seconds_since_start() -> f64 {
    PROCESS_START
        .get_or_init(Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// Where the environment has no usable Wayland setup (no absolute `XDG_RUNTIME_DIR` and no
/// absolute `WAYLAND_DISPLAY`), points `WAYLAND_DISPLAY` at a path that does not exist. The
/// Vulkan driver's window-system code looks for a Wayland display when the GPU is probed, and
/// libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." when it
/// cannot even form the socket's path, which a user reads as llamart failing; llamart never
/// draws on a display, so telling it there is none changes nothing else.
fn quiet_window_system() {
    let absolute = |var: &str| std::env::var_os(var).is_some_and(|v| Path::new(&v).is_absolute());
    if !absolute("XDG_RUNTIME_DIR") && !absolute("WAYLAND_DISPLAY") {
        std::env::set_var("WAYLAND_DISPLAY", "/nonexistent/llamart-has-no-display");
    }
}

fn main() -> ExitCode {
    PROCESS_START.get_or_init(Instant::now);
    // Before any other thread exists, as changing the environment requires.
    quiet_window_system();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llamart: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Model {
    plan: LoadedPlan,
    tokenizer: Tokenizer,
}

fn load(path: &Path) -> anyhow::Result<Model> {
    let plan = LoadedPlan::open(path)?;
    let tokenizer: Tokenizer = serde_json::from_slice(plan.tokenizer_json())
        .with_context(|| format!("{}: the tokenizer section does not parse", path.display()))?;
    Ok(Model { plan, tokenizer })
}

/// Whether a hardware GPU adapter exists, asked of a child process (`llamart probe-gpu`) that
/// starts with the command and answers while the plan loads: the driver stack a probe loads
/// (lavapipe alone adds about 50 MiB) then never enters this process when the answer is the CPU,
/// and its messages do not reach the user. Where the child cannot run, the probe runs here.
struct GpuProbe(Option<std::process::Child>);

impl GpuProbe {
    fn start(command: &Command) -> Self {
        let auto = match command {
            Command::Run { exec, .. }
            | Command::Chat { exec, .. }
            | Command::Serve { exec, .. }
            | Command::Logits { exec, .. }
            | Command::Perplexity { exec, .. }
            | Command::Bench { exec, .. } => exec.backend == Backend::Auto,
            _ => false,
        };
        let child = auto
            .then(|| {
                let exe = std::env::current_exe().ok()?;
                std::process::Command::new(exe)
                    .arg("probe-gpu")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .ok()
            })
            .flatten();
        GpuProbe(child)
    }

    fn hardware(self) -> bool {
        match self.0.map(std::process::Child::wait_with_output) {
            Some(Ok(out)) if out.status.success() => out.stdout.starts_with(b"hardware"),
            _ => llamart::gpu::probe().is_some_and(|a| !a.software),
        }
    }
}

fn uses_gpu(exec: &Exec, probe: GpuProbe) -> bool {
    match exec.backend {
        Backend::Cpu => false,
        Backend::Gpu => true,
        Backend::Auto => probe.hardware(),
    }
}

fn gpu_session(model: &Model) -> anyhow::Result<GpuSession<'_>> {
    let s = GpuSession::new(&model.plan)?;
    if s.adapter.software {
        eprintln!(
            "llamart: running on {} ({}), a software GPU: correct but slow",
            s.adapter.name, s.adapter.backend
        );
    }
    Ok(s)
}

fn evaluator<'m>(
    model: &'m Model,
    exec: &Exec,
    probe: GpuProbe,
) -> anyhow::Result<Box<dyn Evaluator + 'm>> {
    if uses_gpu(exec, probe) {
        Ok(Box::new(gpu_session(model)?))
    } else {
        Ok(Box::new(Session::new(&model.plan, exec.threads)?))
    }
}

/// Generates for one prompt through the engine (the path a server's requests take), with as
/// many tokens as the sequence's context leaves room for at most.
#[allow(clippy::too_many_arguments)]
fn generate_on_engine<B: llamart::engine::BatchEvaluator>(
    session: B,
    prompt: &[u32],
    sampling: SamplingParams,
    n_predict: usize,
    stop_ids: Vec<u32>,
    constraint: Option<llamart::constraint::Constraint>,
    on_token: &mut dyn FnMut(u32),
    stopped: &std::cell::Cell<bool>,
) -> anyhow::Result<(f64, eval::Generated)> {
    use llamart::engine::{Engine, Event, Finish, Request};
    // The session is ready: the load ends here.
    let load_seconds = seconds_since_start();
    let room = session.header().limits.sequence_tokens() as usize + 1 - prompt.len();
    let max_tokens = n_predict.min(room);
    let mut engine = Engine::new(session);
    let id = engine.add(Request {
        prompt: prompt.to_vec(),
        sampling,
        max_tokens,
        stop_ids,
        logprobs: None,
        constraint,
    })?;
    let start = Instant::now();
    let mut first_token_at = None;
    let mut out = eval::Generated {
        stop: "length",
        ..Default::default()
    };
    while engine.busy() {
        engine.step(|event| match event {
            Event::Token { token: id, .. } => {
                first_token_at.get_or_insert_with(Instant::now);
                out.ids.push(id);
                on_token(id);
            }
            Event::Finished(_, Finish::Stop) => out.stop = "eos",
            Event::Finished(_, Finish::Length) if max_tokens < n_predict => out.stop = "context",
            Event::Finished(_, Finish::Length) => {}
        })?;
        if stopped.get() {
            engine.cancel(id);
        }
    }
    let end = Instant::now();
    let first = first_token_at.unwrap_or(end);
    out.prompt_seconds = (first - start).as_secs_f64();
    out.generate_seconds = (end - first).as_secs_f64();
    Ok((load_seconds, out))
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly.
fn out(text: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let probe = GpuProbe::start(&cli.command);
    match cli.command {
        Command::ProbeGpu => {
            let hardware = llamart::gpu::probe().is_some_and(|a| !a.software);
            out(if hardware { "hardware\n" } else { "none\n" })?;
            Ok(())
        }
        Command::Run {
            plan,
            prompt,
            n_predict,
            sampling,
            ignore_eos,
            stop,
            json_schema,
            regex,
            grammar,
            json,
            exec,
        } => {
            let params = sampling.params()?;
            let model = load(&plan)?;
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let spec = if let Some(path) = &json_schema {
                let schema = serde_json::from_str(&read(path)?)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                Some(llamart::constraint::Spec::JsonSchema(schema))
            } else if let Some(path) = &grammar {
                Some(llamart::constraint::Spec::Lark(read(path)?))
            } else {
                regex.map(llamart::constraint::Spec::Regex)
            };
            let constraint = match &spec {
                Some(spec) => {
                    Some(llamart::constraint::Grammars::new(&model.tokenizer)?.compile(spec)?)
                }
                None => None,
            };
            let h = &model.plan.header;
            let (ctx, n_vocab) = (
                h.limits.sequence_tokens() as usize,
                h.model.n_vocab as usize,
            );
            let prompt_ids = model.tokenizer.encode(&prompt, true, true)?;
            if prompt_ids.is_empty() {
                bail!("the prompt is empty");
            }
            if prompt_ids.len() >= ctx {
                bail!("the prompt is {} tokens, but the plan's context holds {ctx} (compile with a larger --ctx)", prompt_ids.len());
            }
            let mut detok = Detokenizer::new(&model.tokenizer);
            let mut text = String::new();
            let mut open = true;
            let mut stop_text = llamart::stop::StopText::new(stop);
            let stopped = std::cell::Cell::new(false);
            let mut emit = |piece: &str| {
                if json {
                    text.push_str(piece);
                } else if open {
                    open = out(piece).unwrap_or(false);
                }
            };
            let mut on_token = |id| {
                let piece = stop_text.push(&detok.push(id));
                stopped.set(stop_text.stopped());
                emit(&piece);
            };
            let stop_ids = if ignore_eos {
                Vec::new()
            } else {
                model.tokenizer.end_of_generation_ids().to_vec()
            };
            let gpu = uses_gpu(&exec, probe);
            let (load_seconds, result) = if gpu && constraint.is_none() {
                let mut s = gpu_session(&model)?;
                let load_seconds = seconds_since_start();
                let mut sampler = Sampler::new(params, n_vocab);
                let result = eval::generate(
                    &mut s,
                    &mut sampler,
                    &prompt_ids,
                    n_predict,
                    ctx,
                    h.limits.max_batch as usize,
                    n_vocab,
                    |id| stopped.get() || (!ignore_eos && model.tokenizer.is_end_of_generation(id)),
                    &mut on_token,
                )?;
                (load_seconds, result)
            } else {
                let engine_run = |session: &mut dyn BatchEvaluator| {
                    generate_on_engine(
                        session,
                        &prompt_ids,
                        params,
                        n_predict,
                        stop_ids,
                        constraint,
                        &mut on_token,
                        &stopped,
                    )
                };
                if gpu {
                    engine_run(&mut gpu_session(&model)?)?
                } else {
                    engine_run(&mut Session::new(&model.plan, exec.threads)?)?
                }
            };
            let mut result = result;
            if stopped.get() {
                result.stop = "stop";
            }
            let tail = stop_text.push(&detok.finish()) + &stop_text.finish();
            let timings = json!({
                "load_ms": load_seconds * 1e3,
                "prompt_ms": result.prompt_seconds * 1e3,
                "prompt_tokens_per_s": prompt_ids.len() as f64 / result.prompt_seconds.max(1e-9),
                "generate_ms": result.generate_seconds * 1e3,
                "generate_tokens_per_s": result.ids.len().saturating_sub(1) as f64 / result.generate_seconds.max(1e-9),
                "stop": result.stop,
            });
            if json {
                text.push_str(&tail);
                out(&(json!({"prompt_ids": prompt_ids, "ids": result.ids, "text": text, "timings": timings}).to_string() + "\n"))?;
            } else if open {
                out(&(tail + "\n"))?;
                if result.stop == "context" {
                    eprintln!("llamart: stopped: the context of {ctx} tokens is full");
                }
            }
            Ok(())
        }
        Command::Chat {
            plan,
            system,
            n_predict,
            sampling,
            exec,
        } => {
            let params = sampling.params()?;
            let model = load(&plan)?;
            if uses_gpu(&exec, probe) {
                chat(&model, gpu_session(&model)?, system, n_predict, params)
            } else {
                chat(
                    &model,
                    Session::new(&model.plan, exec.threads)?,
                    system,
                    n_predict,
                    params,
                )
            }
        }
        Command::Serve {
            plan,
            host,
            port,
            api_key,
            max_queue,
            max_body,
            shutdown_grace,
            exec,
        } => {
            let threads = exec.threads;
            llamart::serve::serve(llamart::serve::Config {
                plan,
                addr: std::net::SocketAddr::new(host, port),
                api_key: api_key.filter(|k| !k.is_empty()),
                max_queue,
                max_body_bytes: max_body,
                shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
                device: Box::new(move || {
                    if uses_gpu(&exec, probe) {
                        llamart::serve::Device::Gpu
                    } else {
                        llamart::serve::Device::Cpu { threads }
                    }
                }),
            })
        }
        Command::Tokenize {
            plan,
            text,
            special,
        } => {
            let model = load(&plan)?;
            let ids = model.tokenizer.encode(&text, true, special)?;
            out(&(serde_json::to_string(&ids)? + "\n"))?;
            Ok(())
        }
        Command::Logits {
            plan,
            ids,
            top,
            exec,
        } => {
            let model = load(&plan)?;
            let h = &model.plan.header;
            let n_vocab = h.model.n_vocab as usize;
            if ids.len() > h.limits.ctx as usize {
                bail!(
                    "{} ids exceed the plan's context of {} tokens",
                    ids.len(),
                    h.limits.ctx
                );
            }
            let mut s = evaluator(&model, &exec, probe)?;
            let mut lines = String::new();
            eval::eval_all(
                &mut *s,
                &ids,
                h.limits.max_batch as usize,
                n_vocab,
                |pos, row| {
                    let top: Vec<(u32, f32)> = eval::top_logits(row, top);
                    lines.push_str(
                        &json!({"pos": pos, "top": top, "lse": eval::log_sum_exp(row)}).to_string(),
                    );
                    lines.push('\n');
                },
            )?;
            out(&lines)?;
            Ok(())
        }
        Command::Perplexity {
            plan,
            file,
            ctx,
            chunks,
            exec,
        } => {
            let model = load(&plan)?;
            let h = &model.plan.header;
            if ctx > h.limits.ctx as usize {
                bail!(
                    "--ctx {ctx} exceeds the plan's context of {} tokens",
                    h.limits.ctx
                );
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8", file.display()))?;
            if text.ends_with('\n') {
                text.pop();
            }
            let tokens = model.tokenizer.encode(&text, true, false)?;
            let bos = model
                .tokenizer
                .add_bos()
                .then(|| model.tokenizer.bos())
                .flatten();
            let mut s = evaluator(&model, &exec, probe)?;
            let start = Instant::now();
            let r = eval::perplexity(
                &mut *s,
                &tokens,
                ctx,
                chunks,
                bos,
                h.limits.max_batch as usize,
                h.model.n_vocab as usize,
            )
            .map_err(anyhow::Error::msg)?;
            let mut report = format!(
                "{} tokens, {} chunks of {ctx}, {} scored, {:.1} s\n",
                tokens.len(),
                r.chunk_ppl.len(),
                r.tokens_scored,
                start.elapsed().as_secs_f64()
            );
            for (i, p) in r.chunk_ppl.iter().enumerate() {
                report.push_str(&format!("chunk {i}: {p:.4}\n"));
            }
            report.push_str(&format!("perplexity: {:.6}\n", r.ppl));
            out(&report)?;
            Ok(())
        }
        Command::Bench {
            plan,
            n_prompt,
            n_gen,
            depth,
            reps,
            parallel,
            json,
            exec,
        } => {
            let model = load(&plan)?;
            let h = &model.plan.header;
            if let Some(parallel) = parallel {
                return bench_parallel(&model, probe, &exec, n_prompt, n_gen, parallel, reps, json);
            }
            if depth + n_prompt.max(n_gen) > h.limits.ctx as usize {
                bail!(
                    "-d {depth} plus -p {n_prompt} / -n {n_gen} exceed the plan's context of {} tokens",
                    h.limits.ctx
                );
            }
            if reps == 0 {
                bail!("-r must be at least 1");
            }
            let mut s = evaluator(&model, &exec, probe)?;
            let load_seconds = seconds_since_start();
            let r = llamart::bench::run(
                &mut *s,
                n_prompt,
                n_gen,
                depth,
                reps,
                h.limits.max_batch as usize,
                h.model.n_vocab,
            )?;
            // Before the bandwidth probe, whose buffer is not the model's.
            let rss = llamart::bench::peak_rss_bytes();
            // The CPU's decode roofline: the machine's read bandwidth over the bytes a decoded
            // token reads, averaged over the tg test's positions.
            let roofline = (s.backend() == "cpu" && n_gen > 0).then(|| {
                let gbps = llamart::bench::read_bandwidth_gbps(exec.threads);
                let kv: u64 = (depth..depth + n_gen)
                    .map(|cached| h.kv_bytes_read_per_decode_token(cached as u64))
                    .sum();
                let bytes = h.bytes_read_per_decode_token() as f64 + kv as f64 / n_gen as f64;
                let tps = gbps * 1e9 / bytes;
                (gbps, tps, r.tg.tps_mean / tps)
            });
            let gpu = s.gpu_step_stats().map(|g| {
                json!({"submits": g.submits, "compute_passes": g.compute_passes, "dispatches": g.dispatches,
                       "bytes_read_back": g.bytes_read_back, "host_encode_us": g.encode_nanos as f64 / 1e3})
            });
            if json {
                let stat = |s: &llamart::bench::Stat| json!({"n": s.n, "tps_mean": s.tps_mean, "tps_std": s.tps_std});
                let j = json!({
                    "pp": stat(&r.pp), "tg": stat(&r.tg), "ttft_ms": r.ttft_ms, "depth": depth,
                    "bandwidth_gbps": roofline.map(|r| r.0), "roofline_tps": roofline.map(|r| r.1),
                    "roofline_fraction": roofline.map(|r| r.2),
                    "load_ms": load_seconds * 1e3, "peak_rss_bytes": rss,
                    "threads": exec.threads, "backend": s.backend(), "gpu_per_decode_token": gpu, "parallel": 1,
                    "model": h.model.name, "plan_bytes": model.plan.file_bytes(),
                });
                out(&(j.to_string() + "\n"))?;
            } else {
                let mut table = String::from(
                    "| model | backend | threads | test | t/s |\n|---|---|---|---|---|\n",
                );
                let at_depth = if depth > 0 {
                    format!(" @ d{depth}")
                } else {
                    String::new()
                };
                for (name, st) in [("pp", &r.pp), ("tg", &r.tg)] {
                    if st.n > 0 {
                        table.push_str(&format!(
                            "| {} | {} | {} | {name}{}{at_depth} | {:.2} ± {:.2} |\n",
                            h.model.name,
                            s.backend(),
                            exec.threads,
                            st.n,
                            st.tps_mean,
                            st.tps_std
                        ));
                    }
                }
                table.push_str(&format!(
                    "\nload {:.1} ms, time to first token {:.1} ms, peak RSS {}\n",
                    load_seconds * 1e3,
                    r.ttft_ms,
                    rss.map_or("unknown".into(), |b| format!(
                        "{:.1} MiB",
                        b as f64 / (1 << 20) as f64
                    ))
                ));
                if let Some((gbps, tps, fraction)) = roofline {
                    table.push_str(&format!(
                        "read bandwidth {gbps:.1} GB/s at {} threads: decode roofline {tps:.1} t/s, tg at {:.0} % of it\n",
                        exec.threads,
                        fraction * 100.0
                    ));
                }
                if let Some(g) = gpu {
                    table.push_str(&format!("GPU per decode token: {g}\n"));
                }
                out(&table)?;
            }
            Ok(())
        }
        Command::Inspect { plan } => {
            let model = LoadedPlan::open(&plan)?;
            out(&format!(
                "// {}: {} bytes, plan format {}\n{}\n",
                plan.display(),
                model.file_bytes(),
                model.header.format_version,
                model.header_text()
            ))?;
            Ok(())
        }
    }
}

/// `llamart bench --parallel N`: N sequences in every step, aggregate tokens/s.
#[allow(clippy::too_many_arguments)]
fn bench_parallel(
    model: &Model,
    probe: GpuProbe,
    exec: &Exec,
    n_prompt: usize,
    n_gen: usize,
    parallel: usize,
    reps: usize,
    json: bool,
) -> anyhow::Result<()> {
    if reps == 0 {
        bail!("-r must be at least 1");
    }
    if exec.backend == Backend::Gpu || (exec.backend == Backend::Auto && probe.hardware()) {
        bail!("--parallel runs on the CPU backend only (the GPU backend evaluates one sequence a step): add --backend cpu");
    }
    let mut session = Session::new(&model.plan, exec.threads)?;
    let load_seconds = seconds_since_start();
    let r = llamart::bench::run_parallel(&mut session, n_prompt, n_gen, parallel, reps)
        .map_err(anyhow::Error::msg)?;
    let rss = llamart::bench::peak_rss_bytes();
    let name = &model.plan.header.model.name;
    if json {
        let stat = |s: &llamart::bench::Stat| json!({"n": s.n, "tps_mean": s.tps_mean, "tps_std": s.tps_std});
        let j = json!({
            "pp": stat(&r.pp), "tg": stat(&r.tg), "parallel": parallel, "depth": 0,
            "load_ms": load_seconds * 1e3, "peak_rss_bytes": rss, "threads": exec.threads,
            "backend": "cpu", "model": name, "plan_bytes": model.plan.file_bytes(),
        });
        out(&(j.to_string() + "\n"))?;
    } else {
        let mut table = String::from(
            "| model | backend | threads | parallel | test | aggregate t/s |\n|---|---|---|---|---|---|\n",
        );
        for (test, st) in [
            (format!("pp{n_prompt}"), &r.pp),
            (format!("tg{n_gen} @ d{n_prompt}"), &r.tg),
        ] {
            if st.n > 0 {
                table.push_str(&format!(
                    "| {name} | cpu | {} | {parallel} | {test} | {:.2} ± {:.2} |\n",
                    exec.threads, st.tps_mean, st.tps_std
                ));
            }
        }
        table.push_str(&format!(
            "\nload {:.1} ms, peak RSS {}\n",
            load_seconds * 1e3,
            rss.map_or("unknown".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / (1 << 20) as f64
            ))
        ));
        out(&table)?;
    }
    Ok(())
}

const CHAT_HELP: &str = "Commands: /system TEXT sets the system message, /clear starts over (keeping the system message), /help, /quit (or Ctrl-D). Ctrl-C stops the current answer.";

/// `llamart chat`: a conversation read from stdin, one user message a line, through the engine,
/// whose page cache keeps the earlier turns. Replies go to stdout; prompts and notices to stderr.
fn chat<B: llamart::engine::BatchEvaluator>(
    model: &Model,
    backend: B,
    system: Option<String>,
    n_predict: usize,
    sampling: SamplingParams,
) -> anyhow::Result<()> {
    use llamart::chat::{ChatTemplate, Clock, Message};
    use llamart::engine::{Engine, Event, Request};
    use std::io::{BufRead, IsTerminal};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tok = &model.tokenizer;
    let source = model.plan.header.model.chat_template.as_deref().context(
        "the model has no chat template (tokenizer.chat_template): use `llamart run -p` instead",
    )?;
    let special = |id: Option<u32>| {
        id.and_then(|i| tok.token_bytes(i).ok())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let bos = special(tok.bos());
    let template = ChatTemplate::new(source, &bos, &special(tok.eos()), Clock::Now)?;
    let limit = model.plan.header.limits.sequence_tokens() as usize;
    let mut engine = Engine::new(backend);
    let mut system = system;
    let start = |system: &Option<String>| -> Vec<Message> {
        system.iter().map(|s| Message::new("system", s)).collect()
    };
    let mut messages = start(&system);
    let interactive = std::io::stdin().is_terminal();
    // Ctrl-C stops the answer being generated; at the prompt it only reminds how to leave.
    let interrupted = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (interrupted, generating) = (interrupted.clone(), generating.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                eprint!("\n(/quit or Ctrl-D to leave)\n> ");
            }
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    if interactive {
        eprintln!("{CHAT_HELP}");
    }
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(command) = line.strip_prefix('/') {
            let (name, arg) = command.split_once(' ').unwrap_or((command, ""));
            match name {
                "quit" | "exit" => break,
                "help" => eprintln!("{CHAT_HELP}"),
                "clear" => {
                    messages = start(&system);
                    eprintln!("(conversation cleared)");
                }
                "system" if !arg.trim().is_empty() => {
                    system = Some(arg.trim().to_string());
                    match messages.first_mut().filter(|m| m.role == "system") {
                        Some(m) => m.content = arg.trim().to_string(),
                        None => messages.insert(0, Message::new("system", arg.trim())),
                    }
                    eprintln!("(system message set)");
                }
                _ => eprintln!("unknown command /{command}. {CHAT_HELP}"),
            }
            continue;
        }
        messages.push(Message::new("user", line));
        let text = template.render(&messages, true)?;
        // The template writes BOS itself where the model wants it; else the tokenizer adds it.
        let add_bos = tok.add_bos() && (bos.is_empty() || !text.starts_with(&bos));
        let prompt = tok.encode(&text, add_bos, true)?;
        if prompt.len() >= limit {
            messages.pop();
            eprintln!("the conversation is {} tokens, but the plan holds {limit} a sequence: /clear to start over (or compile with a larger --ctx)", prompt.len());
            continue;
        }
        let mut detok = Detokenizer::new(tok);
        let mut reply = String::new();
        let mut open = true;
        // As many tokens as the sequence has room for, at most.
        let max_tokens = n_predict.min(limit + 1 - prompt.len());
        let id = engine.add(Request {
            prompt,
            sampling: sampling.clone(),
            max_tokens,
            stop_ids: tok.end_of_generation_ids().to_vec(),
            logprobs: None,
            constraint: None,
        })?;
        interrupted.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        while engine.busy() {
            if interrupted.load(Ordering::SeqCst) {
                engine.cancel(id);
                eprint!(" [stopped]");
                break;
            }
            engine.step(|e| {
                if let Event::Token { token, .. } = e {
                    let piece = detok.push(token);
                    reply.push_str(&piece);
                    if open {
                        open = out(&piece).unwrap_or(false);
                    }
                }
            })?;
        }
        generating.store(false, Ordering::SeqCst);
        let tail = detok.finish();
        reply.push_str(&tail);
        if open && !out(&(tail + "\n"))? {
            break;
        }
        messages.push(Message::new("assistant", &reply));
    }
    Ok(())
}
