//! Chat templates: the model's Jinja template (stored in the plan) rendered as HF transformers'
//! `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks`, loop controls, Python's
//! string and dict methods, transformers' `tojson` (Python's `json.dumps`, not HTML-escaped),
//! `raise_exception` and `strftime_now`, with `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token` in the context.

use std::fmt::Write;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    /// The template refused the conversation (`raise_exception`), or failed while rendering it.
    #[error("the chat template cannot render this conversation: {0}")]
    Render(String),
}

/// What `strftime_now` reads: the clock, or a fixed time (for reproducible renders).
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    Now,
    Fixed(chrono::NaiveDateTime),
}

/// A parsed chat template with the special tokens it may insert.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str, clock: Clock) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", move |format: String| {
            strftime(clock, &format)
        });
        env.add_template_owned(NAME, generation_blocks(source))
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt`, ending where the assistant's
    /// reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self.env.get_template(NAME).expect("added at construction");
        template
            .render(minijinja::context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| ChatError::Render(describe(&e)))
    }
}

/// The source with transformers' `{% generation %}` blocks (which mark the assistant's part for
/// training masks and render their body) as `{% if true %}` blocks: the same text, the same
/// whitespace control.
fn generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        let (before, tag) = rest.split_at(at);
        out.push_str(before);
        let inner = &tag[2..];
        let trimmed = inner.trim_start_matches(['-', '+']).trim_start();
        let word = trimmed
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .next()
            .unwrap_or("");
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let word_at = inner.len() - trimmed.len();
                out.push_str("{%");
                out.push_str(&inner[..word_at]);
                out.push_str(r);
                rest = &inner[word_at + word.len()..];
            }
            None => {
                out.push_str("{%");
                rest = inner;
            }
        }
    }
    out.push_str(rest);
    out
}

/// An error with the causes minijinja chains to it.
fn describe(e: &Error) -> String {
    let mut text = match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

fn strftime(clock: Clock, format: &str) -> Result<String, Error> {
    let now = match clock {
        Clock::Now => chrono::Local::now().naive_local(),
        Clock::Fixed(t) => t,
    };
    let mut out = String::new();
    write!(out, "{}", now.format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        )
    })?;
    Ok(out)
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(usize::try_from(v).unwrap_or(0))),
            ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: bad indent",
                ))
            }
        },
    };
    let (item, key) = match separators {
        Some(s) if !s.is_none() => {
            let item = s.get_item(&Value::from(0))?;
            let key = s.get_item(&Value::from(1))?;
            (
                item.as_str().unwrap_or(", ").to_string(),
                key.as_str().unwrap_or(": ").to_string(),
            )
        }
        // Python's defaults: without an indent ", ", with one "," (lines end there).
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(unit) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    }

    /// `v` as JSON, maps in their order (insertion order, as Python's dicts).
    fn write(&self, v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => {
                let _ = write!(out, "{v}");
            }
            ValueKind::Number => {
                let f = f64::try_from(v.clone())?;
                if !f.is_finite() {
                    // Python writes these, though they are not JSON.
                    out.push_str(if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
            ValueKind::String => self.string(v.as_str().unwrap_or(""), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, depth, '[', ']', items.len(), |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container(out, depth, '{', '}', keys.len(), |i, out| {
                    let key = &keys[i];
                    match key.as_str() {
                        Some(k) => self.string(k, out),
                        None => self.string(&key.to_string(), out),
                    }
                    out.push_str(&self.key);
                    self.write(&v.get_item(key)?, depth + 1, out)
                })?;
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot write a {} as JSON", v.kind()),
                ))
            }
        }
        Ok(())
    }

    /// `n` items between `open` and `close`, with the separators and indentation.
    fn container(
        &self,
        out: &mut String,
        depth: usize,
        open: char,
        close: char,
        n: usize,
        mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            self.newline(depth + 1, out);
            item(i, out)?;
        }
        if n > 0 {
            self.newline(depth, out);
        }
        out.push(close);
        Ok(())
    }

    /// A JSON string as Python writes it: `\n`, `\r`, `\t`, `\b`, `\f`, `\"`, `\\`, other control
    /// characters as `\u00XX`, and with `ensure_ascii` every non-ASCII character as UTF-16 escapes.
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{u:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str) -> String {
        ChatTemplate::new(source, "", "", Clock::Now)
            .unwrap()
            .render(&[], false)
            .unwrap()
    }

    /// The same text as Python's `json.dumps` with transformers' defaults and with options
    /// (expected texts written by Python).
    #[test]
    fn tojson_writes_what_python_writes() {
        let x = r#"{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Köln \"quoted\"\n"}}, "required": ["city"]}, "n": [1, 2.5, none, true, 3.0], "e": {}, "l": []}"#;
        let cases = [
            (
                "",
                r#"{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Köln \"quoted\"\n"}}, "required": ["city"]}, "n": [1, 2.5, null, true, 3.0], "e": {}, "l": []}"#,
            ),
            (
                "(indent=2)",
                r#"{
  "name": "get_weather",
  "parameters": {
    "type": "object",
    "properties": {
      "city": {
        "type": "string",
        "description": "Köln \"quoted\"\n"
      }
    },
    "required": [
      "city"
    ]
  },
  "n": [
    1,
    2.5,
    null,
    true,
    3.0
  ],
  "e": {},
  "l": []
}"#,
            ),
            (
                "(ensure_ascii=true, sort_keys=true, separators=(',', ':'))",
                r#"{"e":{},"l":[],"n":[1,2.5,null,true,3.0],"name":"get_weather","parameters":{"properties":{"city":{"description":"K\u00f6ln \"quoted\"\n","type":"string"}},"required":["city"],"type":"object"}}"#,
            ),
        ];
        for (args, want) in cases {
            assert_eq!(
                render(&format!("{{{{ {x} | tojson{args} }}}}")),
                want,
                "{args}"
            );
        }
    }

    #[test]
    fn generation_blocks_render_their_body_with_the_same_whitespace_control() {
        assert_eq!(
            generation_blocks("a{%- generation -%} b {% endgeneration %}{% if x %}"),
            "a{%- if true -%} b {% endif %}{% if x %}"
        );
        assert_eq!(
            render("x\n{% generation %}\nbody\n{% endgeneration %}\ny"),
            "x\nbody\ny"
        );
    }

    #[test]
    fn strftime_now_formats_the_clock() {
        let t = chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
            .unwrap()
            .and_hms_opt(9, 5, 7)
            .unwrap();
        let source = "{{ strftime_now('%d %b %Y %H:%M') }}";
        let chat = ChatTemplate::new(source, "", "", Clock::Fixed(t)).unwrap();
        assert_eq!(chat.render(&[], false).unwrap(), "01 Dec 2026 09:05");
    }
}
