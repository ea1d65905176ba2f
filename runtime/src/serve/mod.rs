//! `llamart serve`: an OpenAI-compatible HTTP API over the engine.
//!
//! The HTTP side (axum on tokio) parses and checks requests, renders chat templates, tokenizes,
//! detokenizes and applies stop strings; one engine thread ([`worker`]) owns the backend and
//! steps every running sequence together. The two meet over channels only, so a slow client
//! never stalls a step, and a client that goes away frees its pages within one step.

mod api;
mod completions;
mod error;
mod metrics;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::chat::{ChatTemplate, Clock};
use crate::engine::{BatchEvaluator, Engine};
use crate::plan::LoadedPlan;
use crate::tokenizer::Tokenizer;

pub use error::ApiError;
pub use metrics::Metrics;

/// Where the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu { threads: usize },
    Gpu,
}

pub struct Config {
    pub plan: PathBuf,
    pub addr: SocketAddr,
    pub api_key: Option<String>,
    /// Sequences that may wait for admission beyond the plan's --max-seqs; more get 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// How long a shutdown lets running requests finish before it ends them.
    pub shutdown_grace: Duration,
    /// Decides the device once the plan is open (a GPU probe can run meanwhile).
    pub device: Box<dyn FnOnce() -> Device + Send>,
}

/// What the HTTP side needs of the loaded model.
pub(crate) struct Ready {
    pub tokenizer: Tokenizer,
    /// The vocabulary indexed for structured output, or why it could not be.
    pub grammars: Result<crate::constraint::Grammars, crate::constraint::ConstraintError>,
    pub template: Option<ChatTemplate>,
    /// BOS as text, for templates that write it themselves.
    pub bos: String,
    pub model_id: String,
    pub fingerprint: String,
    /// Most tokens one sequence holds: prompt and generated.
    pub ctx: usize,
    pub max_seqs: usize,
    pub n_vocab: usize,
    pub created: u64,
}

pub(crate) struct AppState {
    ready: OnceLock<Arc<Ready>>,
    commands: Mutex<Option<std::sync::mpsc::Sender<worker::Command>>>,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    max_queue: usize,
    /// Sequences submitted and not yet finished.
    in_flight: AtomicUsize,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    fn ready(&self) -> Result<Arc<Ready>, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.ready
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    fn send(&self, command: worker::Command) -> Result<(), ApiError> {
        let guard = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .and_then(|tx| tx.send(command).ok())
            .ok_or_else(|| ApiError::unavailable("the server is shutting down"))
    }

    /// A unique id for a response: a counter after the process's start time.
    fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:08x}", start_seconds())
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn start_seconds() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(unix_seconds)
}

/// Serves until SIGINT or SIGTERM, then stops accepting, lets running requests finish for the
/// grace period, ends the rest and returns.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_async(config))
}

async fn serve_async(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let state = Arc::new(AppState {
        ready: OnceLock::new(),
        commands: Mutex::new(Some(tx)),
        metrics: Arc::new(Metrics::new()),
        api_key: config.api_key.clone(),
        max_queue: config.max_queue,
        in_flight: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
    });
    eprintln!("llamart: listening on http://{addr}");
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let engine_thread = {
        let state = state.clone();
        let plan = config.plan.clone();
        let device = config.device;
        std::thread::Builder::new()
            .name("llamart-engine".into())
            .spawn(move || {
                if let Err(e) = load_and_run(&plan, device, &state, rx) {
                    let _ = failed_tx.send(e);
                }
            })
            .context("cannot start the engine thread")?
    };
    let app = router(state.clone(), config.max_body_bytes);
    let grace = config.shutdown_grace;
    let (load_error_tx, load_error_rx) = tokio::sync::oneshot::channel();
    let shutdown = {
        let state = state.clone();
        async move {
            tokio::select! {
                () = signalled() => eprintln!("llamart: shutting down (finishing running requests for up to {} s)", grace.as_secs()),
                Ok(e) = failed_rx => { let _ = load_error_tx.send(e); }
            }
            state.shutting_down.store(true, Ordering::Relaxed);
            let _ = state.send(worker::Command::Shutdown { grace });
        }
    };
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
        .context("the server failed")?;
    // Requests are answered; let the engine thread end.
    state
        .commands
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let _ = engine_thread.join();
    if let Ok(e) = load_error_rx.await {
        return Err(e);
    }
    eprintln!("llamart: stopped");
    Ok(())
}

async fn signalled() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The engine thread's life: open the plan, tell the HTTP side it is ready, then step.
fn load_and_run(
    path: &std::path::Path,
    device: Box<dyn FnOnce() -> Device + Send>,
    state: &AppState,
    commands: std::sync::mpsc::Receiver<worker::Command>,
) -> anyhow::Result<()> {
    let plan = LoadedPlan::open(path)?;
    let tokenizer: Tokenizer = serde_json::from_slice(plan.tokenizer_json())
        .with_context(|| format!("{}: the tokenizer section does not parse", path.display()))?;
    let special = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_bytes(i).ok())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let (bos, eos) = (special(tokenizer.bos()), special(tokenizer.eos()));
    let h = &plan.header;
    let template = match h.model.chat_template.as_deref() {
        Some(source) => match ChatTemplate::new(source, &bos, &eos, Clock::Now) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("llamart: the model's chat template is unusable ({e}); /v1/chat/completions will refuse requests");
                None
            }
        },
        None => None,
    };
    let model_id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| h.model.name.clone());
    let ready = Ready {
        grammars: crate::constraint::Grammars::new(&tokenizer),
        template,
        bos,
        model_id,
        fingerprint: format!("fp_{:016x}", plan.content_hash() as u64),
        ctx: h.limits.sequence_tokens() as usize,
        max_seqs: h.limits.max_seqs as usize,
        n_vocab: h.model.n_vocab as usize,
        created: unix_seconds(),
        tokenizer,
    };
    let device = device();
    match device {
        Device::Cpu { threads } => {
            let session = crate::cpu::Session::new(&plan, threads)?;
            let backend = format!("the CPU ({threads} threads)");
            run_engine(session, ready, &backend, state, commands);
        }
        Device::Gpu => {
            let session = crate::gpu::GpuSession::new(&plan)?;
            let software = if session.adapter.software {
                ", a software GPU: correct but slow"
            } else {
                ""
            };
            let backend = format!(
                "{} ({}{software})",
                session.adapter.name, session.adapter.backend
            );
            run_engine(session, ready, &backend, state, commands);
        }
    }
    Ok(())
}

/// Marks the server ready, then says so: whoever reads "ready" may send requests at once.
fn run_engine<B: BatchEvaluator>(
    evaluator: B,
    ready: Ready,
    backend: &str,
    state: &AppState,
    commands: std::sync::mpsc::Receiver<worker::Command>,
) {
    let engine = Engine::new(evaluator);
    let announcement = format!(
        "llamart: ready: {} on {backend}, {} sequences of up to {} tokens",
        ready.model_id, ready.max_seqs, ready.ctx
    );
    let _ = state.ready.set(Arc::new(ready));
    eprintln!("{announcement}");
    worker::run(engine, commands, state.metrics.clone());
}

fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completion))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(60),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal("the server failed on this request").into_response()
            },
        ))
        .with_state(state)
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let message = match given {
            None => Some("no API key: send it as `Authorization: Bearer KEY`"),
            Some(g) if g.trim() != key => Some("the API key is wrong"),
            Some(_) => None,
        };
        if let Some(message) = message {
            state.metrics.count(metrics::Outcome::rejected);
            return ApiError::unauthorized(message).into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.ready() {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": if state.shutting_down.load(Ordering::Relaxed) { "shutting down" } else { "loading" }, "message": e.message})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": ready.model_id, "object": "model", "created": ready.created, "owned_by": "llamart",
            "meta": {"context_tokens": ready.ctx, "max_sequences": ready.max_seqs, "n_vocab": ready.n_vocab,
                     "system_fingerprint": ready.fingerprint},
        }],
    }))
    .into_response())
}

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

async fn tokenize(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let req: api::TokenizeRequest = api::fields(&api::json(&api::body(body)?)?)?;
    let tokens = ready
        .tokenizer
        .encode(&req.content, req.add_special, req.parse_special)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize: {e}"), Some("content")))?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

async fn detokenize(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let req: api::DetokenizeRequest = api::fields(&api::json(&api::body(body)?)?)?;
    let n_vocab = ready.n_vocab;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::invalid(
            format!("token id {bad} is outside the vocabulary (0..{n_vocab})"),
            Some("tokens"),
        ));
    }
    let mut detok = crate::tokenizer::Detokenizer::new(&ready.tokenizer);
    let mut content: String = req.tokens.iter().map(|&t| detok.push(t)).collect();
    content.push_str(&detok.finish());
    Ok(Json(json!({ "content": content })).into_response())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{} does not take {method}", uri.path()))
}
