//! The server's Prometheus metrics: counters the HTTP side bumps, gauges the engine thread sets
//! after every step, and latency histograms.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::{Engine, EngineStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

/// How an HTTP request ended.
#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Every choice ended by end-of-generation or a stop string.
    stop,
    /// Some choice reached max_tokens.
    length,
    /// The client went away before the end.
    cancelled,
    /// Refused with a 4xx (invalid, unauthorised, over a limit, queue full).
    rejected,
    /// Failed on the server's side (5xx).
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PageLabel {
    /// held (by running sequences), cached (kept for prefix reuse) or free.
    pub state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabel, Counter>,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_pages: Family<PageLabel, Gauge>,
    pub preemptions: Gauge,
    pub reused_tokens: Gauge,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("llamart");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "requests",
            "Completion requests by how they ended",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of accepted requests",
            prompt_tokens.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "generated_tokens",
            "Tokens generated",
            generated_tokens.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "running_sequences",
            "Sequences admitted to the engine",
            running.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "waiting_sequences",
            "Sequences queued for admission",
            waiting.clone(),
        );
        let kv_pages = Family::<PageLabel, Gauge>::default();
        registry.register(
            "kv_pages",
            "KV cache pages: held by running sequences, cached for prefix reuse, or free",
            kv_pages.clone(),
        );
        let preemptions = Gauge::default();
        registry.register(
            "preemptions",
            "Sequences preempted for pages since start",
            preemptions.clone(),
        );
        let reused_tokens = Gauge::default();
        registry.register(
            "reused_prompt_tokens",
            "Prompt tokens whose cached pages were reused since start",
            reused_tokens.clone(),
        );
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "time_to_first_token",
            "From a request's arrival to its first generated token",
            prometheus_client::registry::Unit::Seconds,
            time_to_first_token.clone(),
        );
        let inter_token_latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "inter_token_latency",
            "Between consecutive tokens of one choice",
            prometheus_client::registry::Unit::Seconds,
            inter_token_latency.clone(),
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            generated_tokens,
            running,
            waiting,
            kv_pages,
            preemptions,
            reused_tokens,
            time_to_first_token,
            inter_token_latency,
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The engine's state after a step (or a cancel).
    pub fn observe_engine<B: crate::engine::BatchEvaluator>(&self, engine: &Engine<B>) {
        let pool = engine.pool();
        let (held, free) = (pool.held(), pool.free());
        let cached = pool.pages() - held - free;
        for (state, n) in [("held", held), ("cached", cached), ("free", free)] {
            self.kv_pages
                .get_or_create(&PageLabel { state })
                .set(n as i64);
        }
        self.running.set(engine.running() as i64);
        self.waiting.set(engine.waiting() as i64);
        let EngineStats {
            preemptions,
            tokens_reused,
            ..
        } = engine.stats();
        self.preemptions.set(preemptions as i64);
        self.reused_tokens.set(tokens_reused as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
