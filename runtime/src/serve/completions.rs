//! /v1/chat/completions and /v1/completions: a request becomes a [`Job`] of token prompts, the
//! engine's tokens come back as [`Update`]s, and each choice turns them into text (detokenized,
//! stop strings held back and cut) that is streamed as server-sent events or answered whole.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{self, ChatRequest, Common, CompletionRequest, Prompt, Settings};
use super::error::ApiError;
use super::metrics::Outcome;
use super::worker::{Command, Job, TokenLogprob, Update};
use super::{AppState, Ready};
use crate::engine::{Finish, RequestError, RequestId};
use crate::stop::StopText;
use crate::tokenizer::{Detokenizer, Tokenizer};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

/// A checked request, ready for the engine.
struct Prepared {
    endpoint: Endpoint,
    job: Job,
    settings: Settings,
    /// Text each choice's output starts with (the prompt, for `echo`), by prompt.
    echo: Vec<String>,
    prompt_tokens: usize,
}

pub(super) async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, body, prepare_chat).await
}

pub(super) async fn completion(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, body, prepare_completion).await
}

/// How an endpoint turns its request (and the fields both endpoints share) into a [`Prepared`].
type Prepare<R> = fn(&Ready, &R, &Common, &AppState) -> Result<Prepared, ApiError>;

async fn handle<R: serde::de::DeserializeOwned>(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    prepare: Prepare<R>,
) -> Response {
    let arrived = Instant::now();
    let prepared = api::body(body).and_then(|body| {
        let ready = state.ready()?;
        let body = api::json(&body)?;
        let (req, common) = (api::fields(&body)?, api::fields(&body)?);
        prepare(&ready, &req, &common, &state).map(|p| (ready, p))
    });
    match prepared {
        Ok((ready, p)) => run(state, ready, p, arrived).await,
        Err(e) => reject(&state, e),
    }
}

fn reject(state: &AppState, e: ApiError) -> Response {
    state.metrics.count(if e.status.is_server_error() {
        Outcome::failed
    } else {
        Outcome::rejected
    });
    e.into_response()
}

fn fresh_seed(state: &AppState) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ state
            .next_id
            .load(Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn prepare_chat(
    ready: &Ready,
    req: &ChatRequest,
    common: &Common,
    state: &AppState,
) -> Result<Prepared, ApiError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid(
            "tool calls are not supported by this server yet",
            Some("tools"),
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty", Some("messages")));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| m.to_template(i))
        .collect::<Result<Vec<_>, _>>()?;
    let template = ready.template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "the model has no usable chat template: use /v1/completions",
            Some("messages"),
        )
    })?;
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    let tok = &ready.tokenizer;
    // The template writes BOS itself where the model wants it; else the tokenizer adds it.
    let add_bos = tok.add_bos() && (ready.bos.is_empty() || !text.starts_with(&ready.bos));
    let prompt = tok.encode(&text, add_bos, true).map_err(|e| {
        ApiError::invalid(
            format!("cannot tokenize the conversation: {e}"),
            Some("messages"),
        )
    })?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (Some(true), k) => Some(api::top_logprobs(k, "top_logprobs")?),
        (_, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "`top_logprobs` needs `logprobs: true`",
                Some("top_logprobs"),
            ))
        }
        _ => None,
    };
    let settings = common.settings(ready.n_vocab, fresh_seed(state))?;
    prepared(
        ready,
        Endpoint::Chat,
        vec![prompt],
        settings,
        logprobs,
        Vec::new(),
        "messages",
    )
}

fn prepare_completion(
    ready: &Ready,
    req: &CompletionRequest,
    common: &Common,
    state: &AppState,
) -> Result<Prepared, ApiError> {
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "`suffix` is not supported",
            Some("suffix"),
        ));
    }
    let tok = &ready.tokenizer;
    let encode = |text: &str| {
        tok.encode(text, true, true).map_err(|e| {
            ApiError::invalid(format!("cannot tokenize the prompt: {e}"), Some("prompt"))
        })
    };
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids.clone()],
        Prompt::IdLists(lists) => lists.clone(),
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    if prompts.len() > api::MAX_N as usize {
        return Err(ApiError::invalid(
            format!("at most {} prompts a request", api::MAX_N),
            Some("prompt"),
        ));
    }
    let settings = common.settings(ready.n_vocab, fresh_seed(state))?;
    if let Some(best_of) = req.best_of.filter(|&b| b as usize != settings.n) {
        return Err(ApiError::invalid(
            format!(
                "`best_of` other than `n` is not supported (got {best_of}, n {})",
                settings.n
            ),
            Some("best_of"),
        ));
    }
    let logprobs = req
        .logprobs
        .map(|k| api::top_logprobs(Some(k), "logprobs"))
        .transpose()?;
    let echo = if req.echo == Some(true) {
        if logprobs.is_some() {
            return Err(ApiError::invalid(
                "`echo` with `logprobs` is not supported",
                Some("echo"),
            ));
        }
        match &req.prompt {
            Prompt::Text(t) => vec![t.clone()],
            Prompt::Texts(ts) => ts.clone(),
            _ => prompts
                .iter()
                .map(|p| {
                    let mut d = Detokenizer::new(tok);
                    let mut text: String = p.iter().map(|&id| d.push(id)).collect();
                    text.push_str(&d.finish());
                    text
                })
                .collect(),
        }
    } else {
        Vec::new()
    };
    prepared(
        ready,
        Endpoint::Completion,
        prompts,
        settings,
        logprobs,
        echo,
        "prompt",
    )
}

fn prepared(
    ready: &Ready,
    endpoint: Endpoint,
    prompts: Vec<Vec<u32>>,
    settings: Settings,
    logprobs: Option<usize>,
    echo: Vec<String>,
    prompt_param: &str,
) -> Result<Prepared, ApiError> {
    let ctx = ready.ctx;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= ctx {
        return Err(ApiError::context_length(
            format!("the prompt is {longest} tokens, but this model's context holds {ctx} tokens (prompt and completion together)"),
            prompt_param,
        ));
    }
    let max_tokens = match settings.max_tokens {
        Some(m) if longest + m > ctx => {
            return Err(ApiError::context_length(
                format!("the prompt of {longest} tokens plus max_tokens {m} exceed this model's context of {ctx} tokens"),
                "max_tokens",
            ))
        }
        Some(m) => m,
        None => ctx - longest,
    };
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let constraint = match &settings.constraint {
        None => None,
        Some(spec) => {
            let grammars = ready.grammars.as_ref().map_err(|e| {
                ApiError::invalid(
                    format!("structured output is unavailable for this model: {e}"),
                    Some("response_format"),
                )
            })?;
            Some(
                grammars
                    .compile(spec)
                    .map_err(|e| ApiError::invalid(e.to_string(), Some("response_format")))?,
            )
        }
    };
    Ok(Prepared {
        endpoint,
        job: Job {
            prompts,
            n: settings.n,
            sampling: settings.sampling.clone(),
            max_tokens,
            stop_ids: if settings.ignore_eos {
                Vec::new()
            } else {
                ready.tokenizer.end_of_generation_ids().to_vec()
            },
            logprobs,
            constraint,
        },
        settings,
        echo,
        prompt_tokens,
    })
}

/// A request's place among the sequences running or waiting: given back, and the request's
/// outcome counted, when dropped (a client that goes away drops it as `cancelled`).
struct Admission {
    state: Arc<AppState>,
    seats: usize,
    outcome: Option<Outcome>,
}

impl Admission {
    fn take(state: &Arc<AppState>, seats: usize, max_seqs: usize) -> Result<Admission, ApiError> {
        let capacity = max_seqs + state.max_queue;
        if seats > capacity {
            return Err(ApiError::invalid(
                format!("the request asks for {seats} sequences (prompts x n), more than this server runs and queues at once ({capacity})"),
                Some("n"),
            ));
        }
        let before = state.in_flight.fetch_add(seats, Ordering::Relaxed);
        if before + seats > capacity {
            state.in_flight.fetch_sub(seats, Ordering::Relaxed);
            return Err(ApiError::queue_full(format!(
                "the queue is full: {before} sequences are running or waiting, at most {capacity} (--max-queue {} beyond the plan's {max_seqs} sequences); retry later",
                state.max_queue
            )));
        }
        Ok(Admission {
            state: state.clone(),
            seats,
            outcome: None,
        })
    }

    fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Ends the request with an error response.
    fn refuse(mut self, e: ApiError) -> Response {
        self.outcome = Some(if e.status.is_server_error() {
            Outcome::failed
        } else {
            Outcome::rejected
        });
        e.into_response()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state
            .in_flight
            .fetch_sub(self.seats, Ordering::Relaxed);
        self.state
            .metrics
            .count(self.outcome.unwrap_or(Outcome::cancelled));
    }
}

async fn run(state: Arc<AppState>, ready: Arc<Ready>, p: Prepared, arrived: Instant) -> Response {
    let admission = match Admission::take(&state, p.job.choices(), ready.max_seqs) {
        Ok(a) => a,
        Err(e) => return reject(&state, e),
    };
    let (tx, mut rx) = unbounded_channel();
    let prompt_tokens = p.prompt_tokens;
    let endpoint = p.endpoint;
    let stream = p.settings.stream;
    let logprobs = p.job.logprobs;
    if let Err(e) = state.send(Command::Submit {
        job: Box::new(p.job),
        updates: tx,
    }) {
        return admission.refuse(e);
    }
    let ids = match rx.recv().await {
        Some(Update::Accepted(ids)) => ids,
        Some(Update::Rejected(e)) => {
            let error = match e {
                RequestError::TooLongForContext { .. } | RequestError::TooLongForPool { .. } => {
                    ApiError::context_length(e.to_string(), "max_tokens")
                }
                _ => ApiError::invalid(e.to_string(), None),
            };
            return admission.refuse(error);
        }
        Some(Update::Failed(m)) => return admission.refuse(ApiError::unavailable(m)),
        _ => return admission.refuse(ApiError::unavailable("the engine stopped")),
    };
    state.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
    let header = Header {
        id: state.response_id(match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        }),
        created: super::unix_seconds(),
        model: ready.model_id.clone(),
        fingerprint: ready.fingerprint.clone(),
    };
    let job = Generation {
        endpoint,
        header,
        prompt_tokens,
        settings_stop: p.settings.stop,
        include_usage: p.settings.include_usage,
        logprobs,
        echo: p.echo,
        n: p.settings.n,
        ids,
        arrived,
    };
    if stream {
        let (events, out) = unbounded_channel::<Result<SseEvent, Infallible>>();
        tokio::spawn(async move {
            let outcome = job.stream(&state, &ready, rx, &events).await;
            admission.finish(outcome);
        });
        Sse::new(tokio_stream::wrappers::UnboundedReceiverStream::new(out))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let mut run = job.start(&state, &ready);
        while !run.done() {
            match rx.recv().await {
                Some(update) => {
                    if let Some(Step::Failed(m)) = run.apply(update) {
                        return admission.refuse(ApiError::unavailable(m));
                    }
                }
                None => return admission.refuse(ApiError::unavailable("the engine stopped")),
            }
        }
        admission.finish(run.outcome());
        Json(run.whole()).into_response()
    }
}

struct Header {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

/// An accepted request's description, before its choices exist.
struct Generation {
    endpoint: Endpoint,
    header: Header,
    prompt_tokens: usize,
    settings_stop: Vec<String>,
    include_usage: bool,
    logprobs: Option<usize>,
    echo: Vec<String>,
    n: usize,
    ids: Vec<RequestId>,
    arrived: Instant,
}

struct TokenEntry {
    id: u32,
    logprob: TokenLogprob,
}

struct Choice<'t> {
    detok: Detokenizer<'t>,
    stop: StopText,
    text: String,
    /// Tokens counted as the completion's (up to a stop string).
    tokens: usize,
    logprobs: Vec<TokenEntry>,
    finish: Option<&'static str>,
    last_token_at: Option<Instant>,
}

/// What an update changed, for a stream to send.
enum Step {
    /// New text (and the logprobs of the tokens that brought it) for a choice.
    Delta {
        choice: usize,
        text: String,
        logprobs: usize,
    },
    /// The choice's last text; `logprobs` as in `Delta`.
    Done {
        choice: usize,
        text: String,
        logprobs: usize,
    },
    Failed(String),
}

/// A generation underway: the choices' state as updates arrive.
struct Run<'a> {
    g: Generation,
    state: &'a AppState,
    tok: &'a Tokenizer,
    choices: Vec<Choice<'a>>,
    first_token_seen: bool,
}

impl Generation {
    fn start<'a>(self, state: &'a AppState, ready: &'a Ready) -> Run<'a> {
        let choices = (0..self.ids.len())
            .map(|_| Choice {
                detok: Detokenizer::new(&ready.tokenizer),
                stop: StopText::new(self.settings_stop.iter().cloned()),
                text: String::new(),
                tokens: 0,
                logprobs: Vec::new(),
                finish: None,
                last_token_at: None,
            })
            .collect();
        Run {
            g: self,
            state,
            tok: &ready.tokenizer,
            choices,
            first_token_seen: false,
        }
    }

    /// Streams the generation as server-sent events until it ends or the client goes away.
    async fn stream(
        self,
        state: &AppState,
        ready: &Ready,
        mut rx: UnboundedReceiver<Update>,
        events: &tokio::sync::mpsc::UnboundedSender<Result<SseEvent, Infallible>>,
    ) -> Outcome {
        let send = |v: Value| {
            events
                .send(Ok(SseEvent::default().data(v.to_string())))
                .is_ok()
        };
        let mut run = self.start(state, ready);
        for choice in 0..run.choices.len() {
            let first = run.opening_chunk(choice);
            if let Some(chunk) = first {
                if !send(chunk) {
                    return Outcome::cancelled;
                }
            }
        }
        while !run.done() {
            let update = tokio::select! {
                u = rx.recv() => u,
                () = events.closed() => return Outcome::cancelled,
            };
            let Some(update) = update else {
                let e = ApiError::unavailable("the engine stopped");
                let _ = send(e.body());
                return Outcome::failed;
            };
            match run.apply(update) {
                None => {}
                Some(Step::Failed(m)) => {
                    let _ = send(ApiError::unavailable(m).body());
                    return Outcome::failed;
                }
                Some(Step::Delta { ref text, .. })
                    if text.is_empty() && run.g.logprobs.is_none() => {}
                Some(step) if !send(run.chunk(&step)) => return Outcome::cancelled,
                Some(_) => {}
            }
        }
        if run.g.include_usage && !send(run.usage_chunk()) {
            return Outcome::cancelled;
        }
        if events.send(Ok(SseEvent::default().data("[DONE]"))).is_err() {
            return Outcome::cancelled;
        }
        run.outcome()
    }
}

impl<'a> Run<'a> {
    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    fn outcome(&self) -> Outcome {
        if self.choices.iter().any(|c| c.finish == Some("length")) {
            Outcome::length
        } else {
            Outcome::stop
        }
    }

    fn apply(&mut self, update: Update) -> Option<Step> {
        match update {
            Update::Token {
                choice,
                token,
                logprob,
            } => {
                let now = Instant::now();
                if !self.first_token_seen {
                    self.first_token_seen = true;
                    self.state
                        .metrics
                        .time_to_first_token
                        .observe((now - self.g.arrived).as_secs_f64());
                }
                let c = self.choices.get_mut(choice)?;
                if c.finish.is_some() {
                    return None;
                }
                if let Some(last) = c.last_token_at.replace(now) {
                    self.state
                        .metrics
                        .inter_token_latency
                        .observe((now - last).as_secs_f64());
                }
                self.state.metrics.generated_tokens.inc();
                c.tokens += 1;
                let had = c.logprobs.len();
                if let Some(logprob) = logprob {
                    c.logprobs.push(TokenEntry { id: token, logprob });
                }
                let piece = c.detok.push(token);
                let text = c.stop.push(&piece);
                c.text.push_str(&text);
                if c.stop.stopped() {
                    c.finish = Some("stop");
                    let _ = self.state.send(Command::Cancel(vec![self.g.ids[choice]]));
                    return Some(Step::Done {
                        choice,
                        text,
                        logprobs: had,
                    });
                }
                Some(Step::Delta {
                    choice,
                    text,
                    logprobs: had,
                })
            }
            Update::Finished { choice, finish } => {
                let c = self.choices.get_mut(choice)?;
                if c.finish.is_some() {
                    return None;
                }
                let tail = c.detok.finish();
                let mut text = c.stop.push(&tail);
                text.push_str(&c.stop.finish());
                c.text.push_str(&text);
                c.finish = Some(if c.stop.stopped() {
                    "stop"
                } else {
                    match finish {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    }
                });
                Some(Step::Done {
                    choice,
                    text,
                    logprobs: c.logprobs.len(),
                })
            }
            Update::Failed(m) => Some(Step::Failed(m)),
            Update::Accepted(_) | Update::Rejected(_) => None,
        }
    }

    fn base(&self, object: &str) -> serde_json::Map<String, Value> {
        let h = &self.g.header;
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(h.id));
        m.insert("object".into(), json!(object));
        m.insert("created".into(), json!(h.created));
        m.insert("model".into(), json!(h.model));
        m.insert("system_fingerprint".into(), json!(h.fingerprint));
        m
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        json!({"prompt_tokens": self.g.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.g.prompt_tokens + completion})
    }

    fn echo_of(&self, choice: usize) -> &str {
        self.g
            .echo
            .get(choice / self.g.n)
            .map_or("", String::as_str)
    }

    /// A chat stream opens each choice with its role; a completion stream opens with the echo.
    fn opening_chunk(&self, choice: usize) -> Option<Value> {
        match self.g.endpoint {
            Endpoint::Chat => Some(self.chunk_value(
                choice,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                None,
            )),
            Endpoint::Completion => {
                let echo = self.echo_of(choice);
                (!echo.is_empty()).then(|| self.chunk_value(choice, json!(echo), Value::Null, None))
            }
        }
    }

    fn chunk(&self, step: &Step) -> Value {
        match *step {
            Step::Delta {
                choice,
                ref text,
                logprobs,
            } => {
                let lp = self.logprobs_json(choice, logprobs);
                let delta = match self.g.endpoint {
                    Endpoint::Chat => json!({"content": text}),
                    Endpoint::Completion => json!(text),
                };
                self.chunk_value(choice, delta, lp, None)
            }
            Step::Done {
                choice,
                ref text,
                logprobs,
            } => {
                let finish = self.choices[choice].finish;
                let lp = if logprobs < self.choices[choice].logprobs.len() {
                    self.logprobs_json(choice, logprobs)
                } else {
                    Value::Null
                };
                let delta = match self.g.endpoint {
                    Endpoint::Chat if text.is_empty() => json!({}),
                    Endpoint::Chat => json!({"content": text}),
                    Endpoint::Completion => json!(text),
                };
                self.chunk_value(choice, delta, lp, finish)
            }
            Step::Failed(ref m) => ApiError::unavailable(m.clone()).body(),
        }
    }

    fn chunk_value(
        &self,
        choice: usize,
        delta: Value,
        logprobs: Value,
        finish: Option<&str>,
    ) -> Value {
        let (object, content_key) = match self.g.endpoint {
            Endpoint::Chat => ("chat.completion.chunk", "delta"),
            Endpoint::Completion => ("text_completion", "text"),
        };
        let mut m = self.base(object);
        m.insert(
            "choices".into(),
            json!([{"index": choice, content_key: delta, "logprobs": logprobs, "finish_reason": finish}]),
        );
        if self.g.include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m)
    }

    fn usage_chunk(&self) -> Value {
        let object = match self.g.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        let mut m = self.base(object);
        m.insert("choices".into(), json!([]));
        m.insert("usage".into(), self.usage());
        Value::Object(m)
    }

    /// The logprobs of a choice's tokens from `from` on, in the endpoint's format; null when
    /// the request did not ask for them.
    fn logprobs_json(&self, choice: usize, from: usize) -> Value {
        if self.g.logprobs.is_none() {
            return Value::Null;
        }
        let entries = &self.choices[choice].logprobs[from..];
        let bytes = |id: u32| self.tok.token_bytes(id).unwrap_or(&[]);
        let text = |id: u32| String::from_utf8_lossy(bytes(id)).into_owned();
        match self.g.endpoint {
            Endpoint::Chat => {
                let content: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let top: Vec<Value> = e
                            .logprob
                            .top
                            .iter()
                            .map(|&(id, lp)| json!({"token": text(id), "logprob": lp, "bytes": bytes(id)}))
                            .collect();
                        json!({"token": text(e.id), "logprob": e.logprob.logprob, "bytes": bytes(e.id), "top_logprobs": top})
                    })
                    .collect();
                json!({ "content": content })
            }
            Endpoint::Completion => {
                // Offsets in characters from the start of the choice's text (echo included).
                let before: usize = self.choices[choice].logprobs[..from]
                    .iter()
                    .map(|e| text(e.id).chars().count())
                    .sum();
                let mut offset = self.echo_of(choice).chars().count() + before;
                let mut tokens = Vec::new();
                let mut token_logprobs = Vec::new();
                let mut top_logprobs = Vec::new();
                let mut text_offset = Vec::new();
                for e in entries {
                    let t = text(e.id);
                    text_offset.push(offset);
                    offset += t.chars().count();
                    tokens.push(t);
                    token_logprobs.push(e.logprob.logprob);
                    let top: serde_json::Map<String, Value> = e
                        .logprob
                        .top
                        .iter()
                        .map(|&(id, lp)| (text(id), json!(lp)))
                        .collect();
                    top_logprobs.push(top);
                }
                json!({"tokens": tokens, "token_logprobs": token_logprobs,
                       "top_logprobs": top_logprobs, "text_offset": text_offset})
            }
        }
    }

    /// The whole response, once every choice is done.
    fn whole(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let logprobs = self.logprobs_json(i, 0);
                match self.g.endpoint {
                    Endpoint::Chat => json!({"index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": logprobs, "finish_reason": c.finish}),
                    Endpoint::Completion => json!({"index": i,
                        "text": format!("{}{}", self.echo_of(i), c.text),
                        "logprobs": logprobs, "finish_reason": c.finish}),
                }
            })
            .collect();
        let mut m = self.base(match self.g.endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completion => "text_completion",
        });
        m.insert("choices".into(), Value::Array(choices));
        m.insert("usage".into(), self.usage());
        Value::Object(m)
    }
}
