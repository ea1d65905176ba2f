//! `llamart run` and `llamart tokenize` on SmolLM2 through the command line.

use std::process::Command;

use llama_e2e::*;

const MODEL: &str = "smollm2-135m-q4_1";

fn llamart(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("llamart")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn plan() -> String {
    compiled_plan(MODEL, &[]).to_str().unwrap().to_string()
}

#[test]
fn greedy_run_follows_the_reference_until_its_first_near_tie() {
    let golden = golden(MODEL);
    let case = &golden["cases"][0];
    let prompt = case["prompt"].as_str().unwrap();
    let (code, stdout, stderr) = llamart(&[
        "run",
        &plan(),
        "-p",
        prompt,
        "-n",
        "24",
        "--temp",
        "0",
        "--json",
        "-t",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(ids_of(&j["prompt_ids"]), ids_of(&case["prompt_ids"]));
    let ours = ids_of(&j["ids"]);
    let reference = ids_of(&case["llamacpp_greedy_ids"]);
    let margins = case["diagnostics"]["llamacpp_greedy_margins"]
        .as_array()
        .unwrap();
    let decisive = margins
        .iter()
        .take_while(|m| m.as_f64().unwrap() >= 0.5)
        .count()
        .min(ours.len());
    assert!(decisive >= 4, "the reference's first tokens are decisive");
    assert_eq!(
        ours[..decisive],
        reference[..decisive],
        "text: {}",
        j["text"]
    );
    assert!(
        j["text"].as_str().unwrap().contains("Paris"),
        "{}",
        j["text"]
    );
    assert!(j["timings"]["generate_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn streamed_text_equals_the_json_text_and_seeds_reproduce() {
    let plan = plan();
    let args = |json: bool, seed: &str| {
        let mut a = vec![
            "run",
            plan.as_str(),
            "-p",
            "Once upon a time",
            "-n",
            "20",
            "--temp",
            "0.9",
            "--seed",
            seed,
            "-t",
            "2",
        ];
        a.extend(json.then_some("--json"));
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = llamart(&refs);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let streamed = run(args(false, "42"));
    let j: serde_json::Value = serde_json::from_str(&run(args(true, "42"))).unwrap();
    assert_eq!(streamed, format!("{}\n", j["text"].as_str().unwrap()));
    assert_eq!(
        run(args(false, "42")),
        streamed,
        "the same seed gives the same text"
    );
    assert_ne!(
        run(args(false, "43")),
        streamed,
        "another seed gives other text"
    );
}

#[test]
fn tokenize_prints_the_golden_prompt_ids() {
    let golden = golden(MODEL);
    let plan = plan();
    for case in golden["cases"].as_array().unwrap() {
        let mut args = vec!["tokenize", plan.as_str(), case["prompt"].as_str().unwrap()];
        if case["parse_special"].as_bool().unwrap() {
            args.push("--special");
        }
        let (code, stdout, stderr) = llamart(&args);
        assert_eq!(code, 0, "{stderr}");
        let ids: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            ids_of(&ids),
            ids_of(&case["prompt_ids"]),
            "{}",
            case["name"]
        );
    }
}

#[test]
fn prompts_longer_than_the_context_and_bad_flags_are_errors() {
    let small = compiled_plan(MODEL, &["--ctx", "8"]);
    let (code, _, stderr) = llamart(&[
        "run",
        small.to_str().unwrap(),
        "-p",
        "one two three four five six seven eight nine ten",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("context holds 8"), "{stderr}");
    let (code, _, stderr) =
        llamart(&["run", small.to_str().unwrap(), "-p", "hi", "--top-p", "1.5"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("top-p"), "{stderr}");
    let (code, _, _) = llamart(&["run", small.to_str().unwrap()]);
    assert_eq!(code, 2, "a missing -p is a usage error");
}

#[test]
fn the_plan_stores_the_products_weights_packed_and_the_lookup_reads_them() {
    // SmolLM2's embedding table is also its LM head: stored packed for the head's product, it
    // is read through the packed layout by the lookup too (the golden tests check the values).
    let plan = llamart::plan::LoadedPlan::open(std::path::Path::new(&plan())).unwrap();
    let weights = &plan.header.weights;
    let packed = |name: &str| weights.iter().any(|w| w.name == name && w.packed);
    assert!(packed("token_embd"), "the tied embedding and head");
    assert!(packed("blk.0.ffn_down"), "a Q4_1 product");
    assert!(
        weights
            .iter()
            .filter(|w| w.ty == llamart::GgmlType::F32)
            .all(|w| !w.packed),
        "norms stay plain"
    );
}

/// `llamart chat`: each stdin line is a user message; the first reply is what `llamart run`
/// generates for the prompt the plan's chat template makes of the conversation, and the second
/// turn answers with the first in its prompt.
#[test]
fn chat_renders_the_models_template_and_keeps_the_conversation() {
    use std::io::Write;
    let plan_path = plan();
    let plan = llamart::plan::LoadedPlan::open(std::path::Path::new(&plan_path)).unwrap();
    let source = plan.header.model.chat_template.clone().unwrap();
    let template = llamart::chat::ChatTemplate::new(
        &source,
        "<|endoftext|>",
        "<|endoftext|>",
        llamart::chat::Clock::Now,
    )
    .unwrap();
    let first = [llamart::chat::Message::new(
        "user",
        "What is the capital of France?",
    )];
    let rendered = template.render(&first, true).unwrap();
    assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");

    let mut child = Command::new(bin("llamart"))
        .args([
            "chat",
            &plan_path,
            "--temp",
            "0",
            "-n",
            "24",
            "-t",
            "2",
            "--backend",
            "cpu",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n\nAnd of Germany?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 2, "one reply a non-empty line: {stdout:?}");
    assert!(replies[1].contains("Berlin"), "{stdout:?}");

    let (code, alone, stderr) = llamart(&[
        "run",
        &plan_path,
        "-p",
        &rendered,
        "-n",
        "24",
        "--temp",
        "0",
        "-t",
        "2",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(replies[0], alone.trim_end_matches('\n'));

    let (code, _, stderr) = llamart(&["chat", &plan_path, "--top-p=2"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("top-p must be in [0, 1]"), "{stderr}");
}

/// `llamart chat`'s commands and Ctrl-C: SIGINT mid-answer stops that answer only; /system,
/// /clear and /quit do what they say (the process ends on /quit with stdin still open).
#[test]
fn chat_commands_and_ctrl_c_stop_the_answer_not_the_program() {
    use std::io::{Read, Write};
    let mut child = Command::new(bin("llamart"))
        .args([
            "chat",
            &plan(),
            "--temp",
            "0",
            "-n",
            "600",
            "-t",
            "2",
            "--backend",
            "cpu",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin
        .write_all(b"/system You count numbers.\nCount from 1 to 300, separated by commas.\n")
        .unwrap();
    let mut first = [0u8; 64];
    assert!(stdout.read(&mut first).unwrap() > 0, "no reply began");
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    stdin.write_all(b"/clear\nWhat is 2 + 2?\n/quit\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/quit did not end the chat"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    for notice in [
        "(system message set)",
        " [stopped]",
        "(conversation cleared)",
    ] {
        assert!(
            stderr.contains(notice),
            "{notice:?} missing from {stderr:?}"
        );
    }
    assert!(
        rest.contains('4'),
        "the question after Ctrl-C was answered: {rest:?}"
    );
}

/// `--stop TEXT` ends the generation at the first TEXT, which is not printed; the text before it
/// is what the free run printed.
#[test]
fn stop_text_ends_the_generation_and_is_not_printed() {
    let plan = plan();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            &plan,
            "-p",
            "The capital of France is",
            "-n",
            "24",
            "--temp",
            "0",
            "--json",
            "-t",
            "2",
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = llamart(&args);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let free = run(&[]);
    let text = free["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the text, spanning a token boundary or inside a token.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "{text:?}");
    let stop: String = chars[6..10].iter().collect();
    let stopped = run(&["--stop", &stop, "--stop", "never appears here"]);
    let before = &text[..text.find(&stop).unwrap()];
    assert_eq!(stopped["text"].as_str().unwrap(), before);
    assert_eq!(stopped["timings"]["stop"], "stop");
    assert!(ids_of(&stopped["ids"]).len() < ids_of(&free["ids"]).len());
}
