//! Shared helpers for the end-to-end tests: test models, compiled plans, golden references, the
//! binaries, and the envelope rule of tests/fixtures/golden/README.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where tools/fetch-models caches models: `$LLAMA_MODELS_DIR`, else `<repo>/models-cache`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("LLAMA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models-cache"))
}

/// A cached test model; a missing one fails the test with the command that fetches it.
pub fn model(id: &str) -> PathBuf {
    let path = models_dir().join(format!("{id}.gguf"));
    assert!(
        path.is_file(),
        "test model {} is missing: run tools/fetch-models (or set LLAMA_MODELS_DIR)",
        path.display()
    );
    path
}

pub fn golden(id: &str) -> Value {
    let path = repo_root().join(format!("tests/fixtures/golden/{id}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

const SCRATCH_PREFIX: &str = "llama-e2e-";

/// A directory for this test process's files. The first call also removes those of earlier test
/// processes that have exited: their plans take hundreds of MB, and the test harness has no
/// teardown in which a process could remove its own.
pub fn scratch_dir() -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| remove_exited_scratch_dirs(&std::env::temp_dir()));
    let dir = std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the scratch directories in `parent` whose process is gone. Whether a process is alive
/// is read from /proc; where there is none, nothing is removed.
pub fn remove_exited_scratch_dirs(parent: &Path) {
    let proc = Path::new("/proc");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    if !proc.join("self").exists() {
        return;
    }
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !proc.join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Whether this process has already had cargo build the workspace's binaries.
static BUILT: Mutex<bool> = Mutex::new(false);

/// Path of a workspace binary built with the same profile as this test, building it if needed.
///
/// It builds what `cargo test --workspace` builds, binaries included (`--no-run`): after the
/// README's test command that is a no-op, whereas `cargo build --bin` resolves the dependencies'
/// features without the dev-dependencies and would rebuild half of them (minutes in CI).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = profile_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["test", "--workspace", "--no-run", "--quiet"])
            .current_dir(repo_root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building the workspace's binaries failed");
        *built = true;
    }
    assert!(path.is_file(), "{} missing after build", path.display());
    path
}

/// Compiles `model_id` once per test process (with the given extra llamac flags) and returns the
/// plan's path.
pub fn compiled_plan(model_id: &str, flags: &[&str]) -> PathBuf {
    static PLANS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let key = format!("{model_id} {}", flags.join(" "));
    let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = plans.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let path = scratch_dir().join(format!("{model_id}-{}.plan", plans.len()));
    let out = Command::new(bin("llamac"))
        .arg("compile")
        .arg(model(model_id))
        .arg("-o")
        .arg(&path)
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llamac compile failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    plans.push((key, path.clone()));
    path
}

/// A distribution given as its largest logits and the log-sum-exp over the whole vocabulary.
#[derive(Clone, Debug)]
pub struct TopLogits {
    pub top: Vec<(u32, f32)>,
    pub lse: f64,
}

impl TopLogits {
    pub fn from_json(v: &Value) -> Self {
        TopLogits {
            top: v["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
                .collect(),
            lse: v["lse"].as_f64().unwrap(),
        }
    }

    pub fn from_row(row: &[f32], n: usize) -> Self {
        TopLogits {
            top: llamart::eval::top_logits(row, n),
            lse: llamart::eval::log_sum_exp(row),
        }
    }

    pub fn argmax(&self) -> u32 {
        self.top[0].0
    }
}

/// The truncated KL of the golden README: sum over hf's listed ids of p_hf * (logp_hf - logp_q),
/// where an id q does not list takes q's smallest listed logit.
pub fn truncated_kl(hf: &TopLogits, q: &TopLogits) -> f64 {
    let q_min = q.top.iter().map(|p| p.1).fold(f32::INFINITY, f32::min);
    hf.top
        .iter()
        .map(|&(id, logit)| {
            let lp_hf = f64::from(logit) - hf.lse;
            let q_logit = q.top.iter().find(|p| p.0 == id).map_or(q_min, |p| p.1);
            let lp_q = f64::from(q_logit) - q.lse;
            lp_hf.exp() * (lp_hf - lp_q)
        })
        .sum()
}

/// The verdict of the envelope rule for one golden case.
#[derive(Debug)]
pub struct Envelope {
    pub ours_mean: f64,
    pub ours_max: f64,
    pub ref_mean: f64,
    pub ref_max: f64,
    pub ours_top1_misses: usize,
    pub ref_top1_misses: usize,
}

impl Envelope {
    pub fn passes(&self) -> bool {
        self.ours_mean <= 1.5 * self.ref_mean + 1e-3
            && self.ours_max <= 1.5 * self.ref_max + 5e-3
            && self.ours_top1_misses <= self.ref_top1_misses
    }
}

/// Applies the rule to `ours[k]`, our distribution at `teacher_forced.positions[k]`.
pub fn envelope(case: &Value, ours: &[TopLogits]) -> Envelope {
    let tf = &case["teacher_forced"];
    let hf: Vec<TopLogits> = tf["hf"]
        .as_array()
        .unwrap()
        .iter()
        .map(TopLogits::from_json)
        .collect();
    let reference: Vec<TopLogits> = tf["llamacpp"]
        .as_array()
        .unwrap()
        .iter()
        .map(TopLogits::from_json)
        .collect();
    assert_eq!(ours.len(), hf.len());
    let ours_kl: Vec<f64> = hf
        .iter()
        .zip(ours)
        .map(|(h, q)| truncated_kl(h, q))
        .collect();
    let ref_kl: Vec<f64> = hf
        .iter()
        .zip(&reference)
        .map(|(h, q)| truncated_kl(h, q))
        .collect();
    let decisive = |h: &TopLogits| h.top[0].1 - h.top[1].1 >= 0.5;
    let misses = |qs: &[TopLogits]| {
        hf.iter()
            .zip(qs)
            .filter(|(h, q)| decisive(h) && h.argmax() != q.argmax())
            .count()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Envelope {
        ours_mean: mean(&ours_kl),
        ours_max: max(&ours_kl),
        ref_mean: mean(&ref_kl),
        ref_max: max(&ref_kl),
        ours_top1_misses: misses(ours),
        ref_top1_misses: misses(&reference),
    }
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Evaluates `ids` from an empty cache and returns every position's logits.
pub fn eval_rows(
    session: &mut dyn llamart::eval::Evaluator,
    plan: &llamart::plan::LoadedPlan,
    ids: &[u32],
) -> Vec<Vec<f32>> {
    let h = &plan.header;
    let mut rows = Vec::new();
    session.reset();
    llamart::eval::eval_all(
        session,
        ids,
        h.limits.max_batch as usize,
        h.model.n_vocab as usize,
        |_, row| rows.push(row.to_vec()),
    )
    .unwrap();
    rows
}

/// Every golden case of `model_id`, teacher-forced through the plan on the CPU, must pass the
/// envelope rule.
pub fn check_teacher_forced(plan: &llamart::plan::LoadedPlan, model_id: &str) {
    let mut session = llamart::cpu::Session::new(plan, 2).unwrap();
    check_teacher_forced_on(&mut session, plan, model_id, |_, _| {});
}

/// The envelope rule on any backend; `also(case, rows)` sees every case's logits rows.
pub fn check_teacher_forced_on(
    session: &mut dyn llamart::eval::Evaluator,
    plan: &llamart::plan::LoadedPlan,
    model_id: &str,
    also: impl FnMut(&Value, &[Vec<f32>]),
) {
    check_teacher_forced_cases_on(session, plan, model_id, &[], also);
}

/// As [`check_teacher_forced_on`], for the cases named in `only` (all when it is empty).
pub fn check_teacher_forced_cases_on(
    session: &mut dyn llamart::eval::Evaluator,
    plan: &llamart::plan::LoadedPlan,
    model_id: &str,
    only: &[&str],
    mut also: impl FnMut(&Value, &[Vec<f32>]),
) {
    let golden = golden(model_id);
    let mut failures = Vec::new();
    let cases = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| only.is_empty() || only.iter().any(|name| c["name"] == *name));
    let mut checked = 0;
    for case in cases {
        checked += 1;
        let tf = &case["teacher_forced"];
        let rows = eval_rows(session, plan, &ids_of(&tf["ids"]));
        also(case, &rows);
        let ours: Vec<TopLogits> = ids_of(&tf["positions"])
            .iter()
            .map(|&p| TopLogits::from_row(&rows[p as usize], 256))
            .collect();
        let e = envelope(case, &ours);
        eprintln!(
            "{model_id} on {}: {}: {e:?}",
            session.backend(),
            case["name"]
        );
        if !e.passes() {
            failures.push(format!("{}: {e:?}", case["name"]));
        }
    }
    assert!(checked > 0, "{model_id}: no golden case is named {only:?}");
    assert!(
        failures.is_empty(),
        "{model_id} outside the envelope:\n{}",
        failures.join("\n")
    );
}

/// Every golden perplexity entry of `model_id`: within 0.5 % of HF's value, or within 1.5x
/// llama.cpp's own distance from it where that is larger. Entries without `token_ids` are
/// tokenized from the text file by `tokenize`.
pub fn check_perplexity(
    plan: &llamart::plan::LoadedPlan,
    model_id: &str,
    tokenize: impl Fn(&str) -> Vec<u32>,
    bos: Option<u32>,
) {
    let mut session = llamart::cpu::Session::new(plan, 2).unwrap();
    check_perplexity_on(&mut session, plan, model_id, tokenize, bos, |_| true);
}

/// The perplexity rule on any backend, for the entries `wanted` accepts.
pub fn check_perplexity_on(
    session: &mut dyn llamart::eval::Evaluator,
    plan: &llamart::plan::LoadedPlan,
    model_id: &str,
    tokenize: impl Fn(&str) -> Vec<u32>,
    bos: Option<u32>,
    wanted: impl Fn(&Value) -> bool,
) {
    let golden = golden(model_id);
    let h = &plan.header;
    for entry in golden["perplexity"].as_array().unwrap() {
        if !wanted(entry) {
            continue;
        }
        let tokens = if entry["token_ids"].is_array() {
            ids_of(&entry["token_ids"])
        } else {
            let text =
                std::fs::read_to_string(repo_root().join("tests/fixtures/GPL-3.txt")).unwrap();
            assert_eq!(entry["text_name"], "GPL-3");
            tokenize(text.strip_suffix('\n').unwrap_or(&text))
        };
        let n_ctx = entry["n_ctx"].as_u64().unwrap() as usize;
        let chunks = entry["n_chunks"].as_u64().unwrap() as usize;
        let start = std::time::Instant::now();
        let r = llamart::eval::perplexity(
            session,
            &tokens,
            n_ctx,
            Some(chunks),
            bos,
            h.limits.max_batch as usize,
            h.model.n_vocab as usize,
        )
        .unwrap();
        let hf = entry["hf_ppl"].as_f64().unwrap();
        let llamacpp = entry["llamacpp_ppl"].as_f64().unwrap();
        let allowed = (0.005 * hf).max(1.5 * (llamacpp - hf).abs());
        eprintln!(
            "{model_id} on {}: perplexity at n_ctx {n_ctx}: {:.4} (hf {hf}, llama.cpp {llamacpp}), {} tokens scored in {:.1} s",
            session.backend(),
            r.ppl,
            r.tokens_scored,
            start.elapsed().as_secs_f64()
        );
        assert_eq!(
            r.tokens_scored,
            entry["tokens_scored"].as_u64().unwrap() as usize
        );
        assert!(
            (r.ppl - hf).abs() <= allowed,
            "{model_id}: perplexity {} vs hf {hf} (allowed ±{allowed})",
            r.ppl
        );
    }
}

/// KL(p || q) over the whole vocabulary, from two rows of logits.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (
        llamart::eval::log_sum_exp(p_logits),
        llamart::eval::log_sum_exp(q_logits),
    );
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&a, &b)| {
            let (la, lb) = (f64::from(a) - lp, f64::from(b) - lq);
            la.exp() * (la - lb)
        })
        .sum()
}

/// True when a GPU adapter exists. Without one, GPU tests fail in CI (which must have lavapipe)
/// and say so loudly elsewhere.
pub fn gpu_available() -> bool {
    if llamart::gpu::probe().is_some() {
        return true;
    }
    let msg =
        "NO GPU ADAPTER: GPU tests cannot run (apt-get install mesa-vulkan-drivers libvulkan1)";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("\n*** {msg}: skipped ***\n");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_of_exited_processes_are_removed_and_live_ones_kept() {
        let parent = std::env::temp_dir().join(format!("scratch-sweep-{}", std::process::id()));
        // Above the largest Linux pid (2^22), so no process has it.
        let exited = parent.join(format!("{SCRATCH_PREFIX}{}", 1u32 << 23));
        let live = parent.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        let other = parent.join("unrelated-7");
        for dir in [&exited, &live, &other] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("f.plan"), b"x").unwrap();
        }
        remove_exited_scratch_dirs(&parent);
        if Path::new("/proc/self").exists() {
            assert!(
                !exited.exists(),
                "the exited process's directory is still there"
            );
        }
        assert!(
            live.join("f.plan").exists(),
            "a live process's directory was removed"
        );
        assert!(other.exists(), "a directory of another name was removed");
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
