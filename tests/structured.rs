//! Structured output: constrained generations on a real model parse, validate against their
//! schema (checked with the `jsonschema` crate) or match their pattern, in the same batched steps
//! as free sequences, whose tokens stay what they are alone.

use llama_e2e::{compiled_plan, golden, ids_of};
use llamart::constraint::{ConstraintError, Grammars, Spec};
use llamart::cpu::Session;
use llamart::engine::{Engine, Event, Finish, Request};
use llamart::plan::LoadedPlan;
use llamart::sampling::SamplingParams;
use llamart::tokenizer::{Detokenizer, Tokenizer};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-q4_1";

fn model() -> (LoadedPlan, Tokenizer) {
    let plan = LoadedPlan::open(&compiled_plan(MODEL, &["--ctx", "1024"])).unwrap();
    let tokenizer = serde_json::from_slice(plan.tokenizer_json()).unwrap();
    (plan, tokenizer)
}

fn chat_prompt(tok: &Tokenizer, ask: &str) -> Vec<u32> {
    let text = format!("<|im_start|>user\n{ask}<|im_end|>\n<|im_start|>assistant\n");
    tok.encode(&text, true, true).unwrap()
}

fn request(tok: &Tokenizer, prompt: Vec<u32>, seed: u64, max_tokens: usize) -> Request {
    Request {
        prompt,
        sampling: SamplingParams {
            temperature: 0.7,
            seed,
            ..SamplingParams::default()
        },
        max_tokens,
        stop_ids: tok.end_of_generation_ids().to_vec(),
        logprobs: None,
        constraint: None,
    }
}

/// Runs the requests together; each one's text and finish.
fn run(plan: &LoadedPlan, tok: &Tokenizer, requests: Vec<Request>) -> Vec<(String, Finish)> {
    let mut engine = Engine::new(Session::new(plan, 2).unwrap());
    let ids: Vec<u64> = requests
        .into_iter()
        .map(|r| engine.add(r).unwrap())
        .collect();
    let mut tokens = vec![Vec::new(); ids.len()];
    let mut finish = vec![None; ids.len()];
    engine
        .run_to_completion(|e| match e {
            Event::Token { id, token, .. } => tokens[id as usize].push(token),
            Event::Finished(id, f) => finish[id as usize] = Some(f),
        })
        .unwrap();
    tokens
        .iter()
        .zip(finish)
        .map(|(t, f)| {
            let mut d = Detokenizer::new(tok);
            let mut text: String = t.iter().map(|&id| d.push(id)).collect();
            text.push_str(&d.finish());
            (text, f.expect("every request finishes"))
        })
        .collect()
}

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Give me a postal address in France as JSON.",
            json!({"type": "object", "properties": {
                "street": {"type": "string", "maxLength": 40},
                "city": {"type": "string", "maxLength": 30},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"enum": ["FR", "DE", "US"]}},
              "required": ["street", "city", "zip", "country"], "additionalProperties": false}),
        ),
        (
            "Write an invoice for two books as JSON.",
            json!({"type": "object", "properties": {
                "number": {"type": "integer", "minimum": 1, "maximum": 100000},
                "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"$ref": "#/$defs/item"}},
                "paid": {"type": "boolean"}},
              "required": ["number", "items", "paid"], "additionalProperties": false,
              "$defs": {"item": {"type": "object", "properties": {
                  "name": {"type": "string", "maxLength": 20},
                  "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                "required": ["name", "qty"], "additionalProperties": false}}}),
        ),
        (
            "Classify the sentiment of: 'I loved this film.'",
            json!({"type": "object", "properties": {
                "label": {"enum": ["positive", "negative", "neutral"]},
                "certain": {"type": "boolean"}},
              "required": ["label", "certain"], "additionalProperties": false}),
        ),
        (
            "Describe a shape as JSON.",
            json!({"anyOf": [
                {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "integer", "minimum": 1, "maximum": 9}},
                 "required": ["kind", "r"], "additionalProperties": false},
                {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 9}},
                 "required": ["kind", "side"], "additionalProperties": false}]}),
        ),
    ]
}

#[test]
fn constrained_outputs_validate_and_free_sequences_beside_them_are_unchanged() {
    let (plan, tok) = model();
    let grammars = Grammars::new(&tok).unwrap();
    let free_prompt = ids_of(&golden(MODEL)["perplexity"][0]["token_ids"])[..40].to_vec();
    let free = request(&tok, free_prompt, 1, 24);
    let alone = run(&plan, &tok, vec![free.clone()]);
    let mut requests = vec![free];
    let mut expect = Vec::new();
    for (ask, schema) in schemas() {
        for seed in 0..2 {
            let mut r = request(&tok, chat_prompt(&tok, ask), seed, 200);
            r.constraint = Some(grammars.compile(&Spec::JsonSchema(schema.clone())).unwrap());
            requests.push(r);
            expect.push(schema.clone());
        }
    }
    let out = run(&plan, &tok, requests);
    assert_eq!(out[0], alone[0], "a free sequence beside constrained ones");
    for ((text, finish), schema) in out[1..].iter().zip(&expect) {
        assert_eq!(*finish, Finish::Stop, "cut short: {text}");
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{text} does not validate: {errors:?}");
    }
}

#[test]
fn regex_and_grammar_outputs_match_and_a_cut_output_ends_with_length() {
    let (plan, tok) = model();
    let grammars = Grammars::new(&tok).unwrap();
    let phone = Spec::Regex("[0-9]{3}-[0-9]{4}".into());
    let yes_no = Spec::Lark(r#"start: "yes" | "no""#.into());
    let schema = Spec::JsonSchema(schemas()[1].1.clone());
    let mut requests = Vec::new();
    for (spec, ask, max) in [
        (&phone, "Give me a phone number.", 40),
        (&yes_no, "Is the sky blue? Answer yes or no.", 40),
        (&schema, "Write an invoice as JSON.", 3),
    ] {
        let mut r = request(&tok, chat_prompt(&tok, ask), 7, max);
        r.constraint = Some(grammars.compile(spec).unwrap());
        requests.push(r);
    }
    let out = run(&plan, &tok, requests);
    let re = regex::Regex::new("^[0-9]{3}-[0-9]{4}$").unwrap();
    assert!(re.is_match(&out[0].0), "{:?}", out[0]);
    assert_eq!(out[0].1, Finish::Stop);
    assert!(matches!(out[1].0.as_str(), "yes" | "no"), "{:?}", out[1]);
    assert_eq!(out[2].1, Finish::Length, "{:?}", out[2]);
    assert!(out[2].0.starts_with('{'), "{:?}", out[2]);
}

#[test]
fn malformed_constraints_are_refused_with_the_reason() {
    let (_, tok) = model();
    let grammars = Grammars::new(&tok).unwrap();
    for (spec, kind) in [
        (Spec::JsonSchema(json!({"type": 5})), "schema"),
        (
            Spec::JsonSchema(json!({"$ref": "#/$defs/missing"})),
            "schema",
        ),
        (Spec::Regex("(unclosed".into()), "regex"),
        (Spec::Lark("start: (".into()), "grammar"),
    ] {
        let e = grammars.compile(&spec).unwrap_err();
        let ok = match (&e, kind) {
            (ConstraintError::Schema(m), "schema")
            | (ConstraintError::Regex(m), "regex")
            | (ConstraintError::Grammar(m), "grammar") => !m.is_empty(),
            _ => false,
        };
        assert!(ok, "{spec:?}: {e}");
    }
}
