//! Helpers shared by the compiler's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Where tools/fetch-models caches models: `$LLAMA_MODELS_DIR`, else `<repo>/models-cache`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("LLAMA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models-cache"))
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

pub const MODEL_IDS: [&str; 3] = [
    "smollm2-135m-q4_1",
    "qwen2.5-0.5b-q4_k_m",
    "gemma3-270m-q4_k_m",
];

/// A scratch directory unique to this test process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llamac-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
