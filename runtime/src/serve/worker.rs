//! The engine's thread: it owns the engine (and through it the backend), takes submissions and
//! cancellations from the HTTP side over a channel, steps while anything runs, and sends each
//! submission's tokens back on its own channel. A submission whose channel is closed (its client
//! went away) is cancelled before the next step, so its pages are free within one step.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{BatchEvaluator, Engine, Event, Finish, Request, RequestError, RequestId};
use crate::sampling::SamplingParams;

use super::metrics::Metrics;

/// What one HTTP request asks of the engine: `n` choices for each prompt.
pub struct Job {
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    /// Choice `i` samples with `seed + i`, so that choices differ and each is reproducible.
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub logprobs: Option<usize>,
    /// Each choice starts from a copy of it.
    pub constraint: Option<crate::constraint::Constraint>,
}

impl Job {
    pub fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub enum Update {
    /// Queued: the engine's id of each choice, in choice order.
    Accepted(Vec<RequestId>),
    Rejected(RequestError),
    Token {
        choice: usize,
        token: u32,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        choice: usize,
        finish: Finish,
    },
    /// The engine failed, or the server is shutting down: nothing more comes.
    Failed(String),
}

pub enum Command {
    Submit {
        job: Box<Job>,
        updates: UnboundedSender<Update>,
    },
    /// Stop these choices (a stop string was seen).
    Cancel(Vec<RequestId>),
    /// Take no more submissions; finish what runs for at most `grace`, then end it.
    Shutdown { grace: Duration },
}

struct Route {
    updates: UnboundedSender<Update>,
    choice: usize,
}

const SHUTTING_DOWN: &str = "the server is shutting down";

/// Runs until shut down (or until every sender of `commands` is gone), then ends what runs.
pub fn run<B: BatchEvaluator>(
    mut engine: Engine<B>,
    commands: Receiver<Command>,
    metrics: Arc<Metrics>,
) {
    let mut routes: HashMap<RequestId, Route> = HashMap::new();
    let mut deadline: Option<Instant> = None;
    metrics.observe_engine(&engine);
    loop {
        // Block for work only when there is nothing to step.
        let first = if engine.busy() {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    deadline.get_or_insert_with(Instant::now);
                    None
                }
            }
        } else if deadline.is_some() {
            break;
        } else {
            match commands.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        let mut next = first;
        while let Some(command) = next {
            match command {
                Command::Submit { job, updates } if deadline.is_some() => {
                    drop(job);
                    let _ = updates.send(Update::Failed(SHUTTING_DOWN.into()));
                }
                Command::Submit { job, updates } => submit(&mut engine, &mut routes, job, updates),
                Command::Cancel(ids) => {
                    for id in ids {
                        routes.remove(&id);
                        engine.cancel(id);
                    }
                }
                Command::Shutdown { grace } => {
                    deadline.get_or_insert(Instant::now() + grace);
                }
            }
            next = commands.try_recv().ok();
        }
        // Clients that went away.
        routes.retain(|&id, route| {
            let open = !route.updates.is_closed();
            if !open {
                engine.cancel(id);
            }
            open
        });
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if engine.busy() {
            let result = engine.step(|event| match event {
                Event::Token {
                    id,
                    token,
                    logprobs,
                } => {
                    if let Some(route) = routes.get(&id) {
                        let logprob = logprobs.map(|l| TokenLogprob {
                            logprob: l.token,
                            top: l.top.to_vec(),
                        });
                        let _ = route.updates.send(Update::Token {
                            choice: route.choice,
                            token,
                            logprob,
                        });
                    }
                }
                Event::Finished(id, finish) => {
                    if let Some(route) = routes.remove(&id) {
                        let _ = route.updates.send(Update::Finished {
                            choice: route.choice,
                            finish,
                        });
                    }
                }
            });
            if let Err(e) = result {
                eprintln!("llamart: the engine failed: {e}");
                for (id, route) in routes.drain() {
                    engine.cancel(id);
                    let _ = route
                        .updates
                        .send(Update::Failed(format!("the engine failed: {e}")));
                }
            }
        }
        metrics.observe_engine(&engine);
    }
    for (id, route) in routes.drain() {
        engine.cancel(id);
        let _ = route.updates.send(Update::Failed(SHUTTING_DOWN.into()));
    }
    metrics.observe_engine(&engine);
}

fn submit<B: BatchEvaluator>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<RequestId, Route>,
    job: Box<Job>,
    updates: UnboundedSender<Update>,
) {
    let mut ids = Vec::with_capacity(job.choices());
    for prompt in &job.prompts {
        for _ in 0..job.n {
            let mut sampling = job.sampling.clone();
            sampling.seed = sampling.seed.wrapping_add(ids.len() as u64);
            let request = Request {
                prompt: prompt.clone(),
                sampling,
                max_tokens: job.max_tokens,
                stop_ids: job.stop_ids.clone(),
                logprobs: job.logprobs,
                constraint: job.constraint.clone(),
            };
            match engine.add(request) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        engine.cancel(id);
                    }
                    let _ = updates.send(Update::Rejected(e));
                    return;
                }
            }
        }
    }
    for (choice, &id) in ids.iter().enumerate() {
        routes.insert(
            id,
            Route {
                updates: updates.clone(),
                choice,
            },
        );
    }
    let _ = updates.send(Update::Accepted(ids));
}
