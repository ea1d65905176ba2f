//! `llamac inspect`: what a GGUF file holds, for people (`render_text`) and scripts (`to_json`).

use std::collections::BTreeMap;
use std::fmt::Write;

use llamart::GgmlType;
use serde_json::json;

use crate::gguf::{Array, GgufFile, Value};

/// Arrays longer than this are summarized in JSON output.
const JSON_ARRAY_LIMIT: usize = 64;

pub fn to_json(f: &GgufFile) -> serde_json::Value {
    let metadata: serde_json::Map<String, serde_json::Value> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json(JSON_ARRAY_LIMIT)))
        .collect();
    let tensors: Vec<_> = f
        .tensors()
        .iter()
        .map(|t| json!({"name": t.name, "type": t.ty.name(), "shape": t.dims, "bytes": t.bytes, "offset": f.data_offset + t.offset}))
        .collect();
    let totals: serde_json::Map<_, _> = type_totals(f)
        .into_iter()
        .map(|(ty, (count, bytes))| {
            (
                ty.name().to_string(),
                json!({"tensors": count, "bytes": bytes}),
            )
        })
        .collect();
    json!({
        "version": f.version,
        "architecture": f.architecture(),
        "file_bytes": f.file_len(),
        "alignment": f.alignment,
        "data_offset": f.data_offset,
        "metadata": metadata,
        "tensors": tensors,
        "totals_by_type": totals,
    })
}

fn type_totals(f: &GgufFile) -> BTreeMap<GgmlType, (usize, u64)> {
    let mut totals = BTreeMap::new();
    for t in f.tensors() {
        let e = totals.entry(t.ty).or_insert((0, 0));
        e.0 += 1;
        e.1 += t.bytes;
    }
    totals
}

pub fn render_text(f: &GgufFile) -> String {
    let mut out = String::new();
    let arch = f.architecture().unwrap_or("(no general.architecture)");
    let name = f
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("unnamed model");
    let _ = writeln!(out, "{name}  [{arch}]");
    let _ = writeln!(
        out,
        "GGUF v{}, {}, {} tensors, {} metadata keys, alignment {}",
        f.version,
        human_bytes(f.file_len()),
        f.tensors().len(),
        f.metadata().len(),
        f.alignment
    );
    render_hyperparameters(&mut out, f, arch);
    render_tokenizer(&mut out, f);
    render_tensors(&mut out, f);
    out
}

fn render_hyperparameters(out: &mut String, f: &GgufFile, arch: &str) {
    let prefix = format!("{arch}.");
    let rows: Vec<(&str, String)> = f
        .metadata()
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|short| (short, scalar_text(v))))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nhyperparameters");
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        let _ = writeln!(out, "  {k:width$}  {v}");
    }
    let get = |key: &str| f.get(&format!("{prefix}{key}")).and_then(Value::as_u64);
    if let (None, Some(d), Some(h)) = (
        get("attention.key_length"),
        get("embedding_length"),
        get("attention.head_count"),
    ) {
        if let Some(head_dim) = d.checked_div(h) {
            let _ = writeln!(
                out,
                "  {:width$}  {head_dim} (embedding_length / head_count)",
                "head dim",
            );
        }
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Array(a) => array_text(a),
        Value::String(s) => format!("{s:?}"),
        // Shortest text that reads back as the same f32 (1e-5, not 9.999999747378752e-6).
        Value::F32(v) => format!("{v:e}"),
        other => other.to_json(0).to_string(),
    }
}

fn array_text(a: &Array) -> String {
    let json = a.to_json(16);
    if json.is_array() {
        json.to_string()
    } else {
        format!("[{} x {}]", a.len(), a.element_type().name())
    }
}

fn render_tokenizer(out: &mut String, f: &GgufFile) {
    let get = |k: &str| f.get(&format!("tokenizer.ggml.{k}"));
    let Some(model) = get("model").and_then(Value::as_str) else {
        let _ = writeln!(out, "\ntokenizer: none");
        return;
    };
    let _ = writeln!(out, "\ntokenizer");
    let pre = get("pre").and_then(Value::as_str).unwrap_or("default");
    let _ = writeln!(out, "  model          {model} (pre-tokenizer: {pre})");
    let tokens = get("tokens").and_then(Value::as_array);
    let vocab = tokens.map(Array::len);
    let merges = get("merges").and_then(Value::as_array).map(Array::len);
    let mut line = format!("{} tokens", vocab.map_or("?".into(), |n| n.to_string()));
    if let Some(m) = merges {
        let _ = write!(line, ", {m} merges");
    }
    if get("scores").is_some() {
        line.push_str(", scores");
    }
    let _ = writeln!(out, "  vocab          {line}");
    let token_text = |id: u64| match tokens {
        Some(Array::String(t)) => t
            .get(id as usize)
            .map_or("out of range".into(), |s| format!("{s:?}")),
        _ => String::new(),
    };
    let mut special = Vec::new();
    for role in [
        "bos", "eos", "eot", "eom", "unknown", "padding", "sep", "mask",
    ] {
        if let Some(id) = get(&format!("{role}_token_id")).and_then(Value::as_u64) {
            special.push(format!("{role} {id} {}", token_text(id)));
        }
    }
    if !special.is_empty() {
        let _ = writeln!(out, "  special        {}", special.join(", "));
    }
    let flags: Vec<String> = ["add_bos_token", "add_eos_token", "add_space_prefix"]
        .iter()
        .filter_map(|k| get(k).and_then(Value::as_bool).map(|b| format!("{k}={b}")))
        .collect();
    if !flags.is_empty() {
        let _ = writeln!(out, "  flags          {}", flags.join(", "));
    }
    let template = f.get("tokenizer.chat_template").and_then(Value::as_str);
    let _ = writeln!(
        out,
        "  chat template  {}",
        template.map_or("none".to_string(), |t| format!("yes ({} bytes)", t.len()))
    );
}

fn render_tensors(out: &mut String, f: &GgufFile) {
    let _ = writeln!(out, "\ntensors");
    let name_w = f
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "  {:name_w$}  {:7}  {:20}  {:>10}",
        "name", "type", "shape", "bytes"
    );
    for t in f.tensors() {
        let shape = format!("{:?}", t.dims);
        let _ = writeln!(
            out,
            "  {:name_w$}  {:7}  {:20}  {:>10}",
            t.name,
            t.ty.name(),
            shape,
            human_bytes(t.bytes)
        );
    }
    let _ = writeln!(out, "\ntotals by type");
    let mut all = (0, 0);
    for (ty, (count, bytes)) in type_totals(f) {
        let _ = writeln!(
            out,
            "  {:7}  {count:5} tensors  {:>10}",
            ty.name(),
            human_bytes(bytes)
        );
        all.0 += count;
        all.1 += bytes;
    }
    let _ = writeln!(
        out,
        "  {:7}  {:5} tensors  {:>10}",
        "all",
        all.0,
        human_bytes(all.1)
    );
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
