//! Malformed GGUF files through the `llamac` binary: truncations, forged counts and random bytes
//! must each end in a clear error and exit status 1 — never a panic (101), an abort or a signal,
//! and never a large allocation.
//!
//! This file is its own test process, so the peak RSS of its children measures only these runs.

mod common;

use std::path::Path;
use std::process::Command;

use llamac::gguf::GgufFile;

/// Peak resident memory any malformed input may drive `llamac inspect` to. Measured peaks are
/// about 9 MiB for inputs that fail only after the whole header (vocabulary included) was read,
/// and about 2 MiB for those that fail early.
const MAX_RSS_BYTES: u64 = 24 << 20;

fn expect_clean_error(path: &Path, case: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamac"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(stderr.starts_with("llamac: error: "), "{case}: {stderr}");
    assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{case}: printed output for a bad file"
    );
}

fn peak_child_rss_bytes() -> u64 {
    let mut usage = unsafe { std::mem::zeroed::<libc::rusage>() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

/// xorshift64*: deterministic bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file")
}

#[test]
fn malformed_files_fail_cleanly_in_little_memory() {
    let model = common::model("smollm2-135m-q4_1");
    let dir = common::scratch_dir("robustness");
    // The parent stays small on purpose: a spawned child's peak RSS starts from its parent's (the
    // address space it execs from), so the model is never read whole here.
    let (data_offset, first_tensor_dims_at) = {
        let parsed = GgufFile::open(&model).unwrap();
        let t = &parsed.tensors()[0];
        (
            parsed.data_offset as usize,
            t.header_offset as usize + 8 + t.name.len() + 4,
        )
    };
    let file_len = std::fs::metadata(&model).unwrap().len() as usize;
    let mut head = vec![0u8; data_offset + 65536];
    std::io::Read::read_exact(&mut std::fs::File::open(&model).unwrap(), &mut head).unwrap();
    let mut cases = 0;

    // Truncations: 14 through the header, 6 through the tensor data.
    let mut offsets: Vec<usize> = vec![0, 3, 4, 7, 8, 16, 23, 24, 40];
    offsets.extend((1..=4).map(|i| data_offset * i / 5));
    offsets.push(data_offset - 1);
    offsets.extend([
        data_offset + 1,
        data_offset + 4096,
        file_len / 2,
        file_len - 4096,
    ]);
    offsets.extend([file_len - 32, file_len - 1]);
    assert_eq!(offsets.len(), 20);
    let truncated = dir.join("truncated.gguf");
    for &len in &offsets {
        if len <= head.len() {
            std::fs::write(&truncated, &head[..len]).unwrap();
        } else {
            std::fs::copy(&model, &truncated).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&truncated)
                .unwrap()
                .set_len(len as u64)
                .unwrap();
        }
        expect_clean_error(&truncated, &format!("truncated to {len} bytes"));
        cases += 1;
    }

    // Counts and lengths replaced by huge values.
    let tokens_key = find(&head, b"tokenizer.ggml.tokens");
    let tokens_len_at = tokens_key + "tokenizer.ggml.tokens".len() + 4 + 4;
    let first_token_len_at = tokens_len_at + 8;
    let dims_at = first_tensor_dims_at;
    let forged = dir.join("forged.gguf");
    for huge in [1u64 << 60, u64::MAX, 1 << 32, (file_len as u64) * 2] {
        for (what, at) in [
            ("tensor count", 8),
            ("metadata count", 16),
            ("first key length", 24),
            ("token array length", tokens_len_at),
            ("first token length", first_token_len_at),
            ("first tensor's first dimension", dims_at),
            ("first tensor's n_dims", dims_at - 4),
        ] {
            let mut bytes = head.clone();
            let width = if what.ends_with("n_dims") { 4 } else { 8 };
            bytes[at..at + width].copy_from_slice(&huge.to_le_bytes()[..width]);
            std::fs::write(&forged, &bytes).unwrap();
            expect_clean_error(&forged, &format!("{what} = {huge}"));
            cases += 1;
        }
    }

    // Random bytes, bare and behind a valid GGUF v3 prefix.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let random = dir.join("random.gguf");
    for i in 0..40 {
        let len = (rng.next() % 65536) as usize;
        let mut bytes = rng.bytes(len);
        if i % 2 == 1 && len >= 8 {
            bytes[..8].copy_from_slice(b"GGUF\x03\x00\x00\x00");
        }
        std::fs::write(&random, &bytes).unwrap();
        expect_clean_error(&random, &format!("random file {i} of {len} bytes"));
        cases += 1;
    }

    let peak = peak_child_rss_bytes();
    eprintln!(
        "{cases} malformed files rejected; peak child RSS {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(peak < MAX_RSS_BYTES, "peak RSS {peak} bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}
