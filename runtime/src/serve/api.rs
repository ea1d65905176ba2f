//! OpenAI's request bodies, as far as llamart serves them, and their checks. Unknown fields are
//! ignored (as OpenAI does); a known field of the wrong type, or a value out of range, is an
//! [`ApiError`] naming the field.

use std::collections::HashMap;

use serde::Deserialize;

use super::error::ApiError;
use crate::sampling::SamplingParams;

/// Fields shared by /v1/chat/completions and /v1/completions.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // llama.cpp's extensions.
    pub top_k: Option<u64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<u64>,
    /// Generate past end-of-generation tokens (for benchmarks: exactly max_tokens).
    pub ignore_eos: Option<bool>,
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `name` and `strict` are read only so that a wrong type is refused (the schema is always
/// followed strictly).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

impl ResponseFormat {
    /// What the output must match, if anything.
    pub fn spec(&self) -> Result<Option<crate::constraint::Spec>, ApiError> {
        use crate::constraint::Spec;
        match self.kind.as_str() {
            "text" => Ok(None),
            "json_object" => Ok(Some(Spec::JsonSchema(
                serde_json::json!({"type": "object"}),
            ))),
            "json_schema" => match self.json_schema.as_ref().and_then(|j| j.schema.clone()) {
                Some(schema) => Ok(Some(Spec::JsonSchema(schema))),
                None => Err(ApiError::invalid(
                    "`response_format.json_schema.schema` is missing",
                    Some("response_format.json_schema.schema"),
                )),
            },
            other => Err(ApiError::invalid(
                format!(
                    "`response_format.type` `{other}` is not one of text, json_object, json_schema"
                ),
                Some("response_format.type"),
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub best_of: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// A request's body, or the error for a body too large (413) or unreadable.
pub fn body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("the body is too large: {rejection}"))
        } else {
            ApiError::invalid(format!("cannot read the body: {rejection}"), None)
        }
    })
}

/// llama-server's /tokenize.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    /// Add BOS where the model wants it.
    #[serde(default)]
    pub add_special: bool,
    /// Read special-token text such as `<|im_start|>` as the special token.
    #[serde(default = "yes")]
    pub parse_special: bool,
}

fn yes() -> bool {
    true
}

/// llama-server's /detokenize.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

/// Parses a body as JSON.
pub fn json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    }
    Ok(value)
}

/// Reads a request's fields as `T`, naming the field that does not fit.
pub fn fields<T: serde::de::DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let mut message = e.into_inner().to_string();
        // Say what an either-or field takes instead of serde's "did not match any variant".
        for (name, takes) in [
            (
                "Prompt",
                "a string, an array of strings, an array of token ids or an array of such arrays",
            ),
            ("Stop", "a string or an array of strings"),
            ("Content", "a string or an array of content parts"),
        ] {
            if message.contains(&format!("untagged enum {name}")) {
                message = format!("must be {takes}");
            }
        }
        if path == "." {
            ApiError::invalid(
                format!("the body does not fit the request: {message}"),
                None,
            )
        } else {
            ApiError::invalid(format!("`{path}`: {message}"), Some(&path))
        }
    })
}

impl ChatMessage {
    /// The message as the chat template sees it: text parts joined, `developer` as `system`.
    pub fn to_template(&self, index: usize) -> Result<crate::chat::Message, ApiError> {
        let param = || format!("messages[{index}].content");
        let content = match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (i, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                format!("{}[{i}] is a text part without `text`", param()),
                                Some(&param()),
                            ))
                        }
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!(
                                    "{}[{i}] is a `{kind}` part: only text parts are supported",
                                    param()
                                ),
                                Some(&param()),
                            ))
                        }
                    }
                }
                text
            }
        };
        let role = match self.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].role `{other}` is not one of system, developer, user, assistant, tool"),
                    Some(&format!("messages[{index}].role")),
                ))
            }
        };
        Ok(crate::chat::Message::new(role, &content))
    }
}

/// What the common fields ask for, checked.
pub struct Settings {
    pub sampling: SamplingParams,
    pub constraint: Option<crate::constraint::Spec>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

/// Most choices one request may ask for.
pub const MAX_N: u64 = 64;
/// Most alternatives a position's logprobs may list.
pub const MAX_TOP_LOGPROBS: u64 = 20;

fn range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
            format!("`{name}` must be between {lo} and {hi}, got {x}"),
            Some(name),
        )),
        v => Ok(v),
    }
}

impl Common {
    /// Sampling defaults are llama-server's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05);
    /// a request without a seed gets a fresh one.
    pub fn settings(&self, n_vocab: usize, fresh_seed: u64) -> Result<Settings, ApiError> {
        let d = SamplingParams::default();
        let temperature = range("temperature", self.temperature, 0.0, 2.0)?;
        let top_p = range("top_p", self.top_p, 0.0, 1.0)?;
        let min_p = range("min_p", self.min_p, 0.0, 1.0)?;
        let presence = range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let frequency = range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let repeat = range("repeat_penalty", self.repeat_penalty, 0.01, 10.0)?;
        let mut logit_bias = Vec::new();
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let id = key
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < n_vocab);
            let Some(id) = id else {
                return Err(ApiError::invalid(
                    format!(
                        "`logit_bias` key `{key}` is not a token id of this model (0..{n_vocab})"
                    ),
                    Some("logit_bias"),
                ));
            };
            range("logit_bias", Some(bias), -100.0, 100.0)?;
            logit_bias.push((id, bias));
        }
        logit_bias.sort_by_key(|b| b.0);
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
                Some("n"),
            ));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 16 {
            return Err(ApiError::invalid(
                format!("`stop` may hold at most 16 strings, got {}", stop.len()),
                Some("stop"),
            ));
        }
        let sampling = SamplingParams {
            temperature: temperature.unwrap_or(d.temperature),
            top_k: self.top_k.map_or(d.top_k, |k| k as usize),
            top_p: top_p.unwrap_or(d.top_p),
            min_p: min_p.unwrap_or(d.min_p),
            repeat_penalty: repeat.unwrap_or(d.repeat_penalty),
            frequency_penalty: frequency.unwrap_or(d.frequency_penalty),
            presence_penalty: presence.unwrap_or(d.presence_penalty),
            penalty_last_n: self
                .repeat_last_n
                .map_or(d.penalty_last_n, |n| n.min(4096) as usize),
            seed: self.seed.map_or(fresh_seed, |s| s as u64),
            logit_bias,
        };
        let constraint = match &self.response_format {
            Some(f) => f.spec()?,
            None => None,
        };
        Ok(Settings {
            sampling,
            constraint,
            max_tokens: max_tokens.map(|m| m.min(u32::MAX as u64) as usize),
            stop,
            n: n as usize,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// How many alternatives a request's logprobs ask for, checked.
pub fn top_logprobs(asked: Option<u64>, param: &str) -> Result<usize, ApiError> {
    match asked {
        Some(k) if k > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
            format!("`{param}` must be at most {MAX_TOP_LOGPROBS}, got {k}"),
            Some(param),
        )),
        k => Ok(k.unwrap_or(0) as usize),
    }
}
