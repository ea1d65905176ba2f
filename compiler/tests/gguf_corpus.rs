//! Replays the GGUF parser's regression corpus (tests/fixtures/gguf-corpus, made by
//! tools/gen-gguf-corpus.py and extended with fuzzer finds): each file must give exactly the
//! outcome its EXPECTED line names.

use std::path::PathBuf;

use llamac::gguf::GgufFile;

#[test]
fn corpus_files_give_their_expected_outcome() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf-corpus");
    let manifest = std::fs::read_to_string(dir.join("EXPECTED")).unwrap();
    let mut checked = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split('\t').collect();
        let bytes = std::fs::read(dir.join(format!("{}.bin", fields[0]))).unwrap();
        match (GgufFile::from_bytes(bytes), fields[1]) {
            (Ok(_), "ok") => {}
            (Err(e), "error") => {
                let want = fields.get(2).copied().unwrap_or("");
                assert!(
                    e.to_string().contains(want),
                    "{}: error {e:?} lacks {want:?}",
                    fields[0]
                );
            }
            (Ok(_), _) => panic!("{}: parsed, but EXPECTED says {line}", fields[0]),
            (Err(e), _) => panic!("{}: failed with {e}, but EXPECTED says {line}", fields[0]),
        }
        checked += 1;
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("bin".as_ref()));
    assert_eq!(
        files.count(),
        checked,
        "every corpus file needs an EXPECTED line"
    );
}
