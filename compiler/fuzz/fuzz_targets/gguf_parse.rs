//! Feeds arbitrary bytes to the GGUF parser and touches everything it accepted. Crashes found here
//! go into tests/fixtures/gguf-corpus with their expected outcome, where the normal test suite
//! replays them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamac::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(data.to_vec()) {
        for (key, value) in file.metadata() {
            assert!(file.get(key).is_some());
            let _ = value.to_json(64);
        }
        for tensor in file.tensors() {
            assert_eq!(file.tensor_data(tensor).len() as u64, tensor.bytes);
        }
        let _ = llamac::inspect::render_text(&file);
    }
});
