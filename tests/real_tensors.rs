//! Dequantization of real tensors from the three test models, through the GGUF reader, checked
//! bit for bit against the `gguf` Python package (digests in tests/fixtures/real-tensors.json,
//! made by tools/gen-quant-fixtures.py --real-tensors).

use llama_e2e::*;
use llamac::gguf::GgufFile;
use sha2::{Digest, Sha256};

#[test]
fn one_tensor_of_every_type_in_every_model_dequantizes_exactly() {
    let path = repo_root().join("tests/fixtures/real-tensors.json");
    let entries: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut files: Vec<(String, GgufFile)> = Vec::new();
    let mut checked = Vec::new();
    for e in entries.as_array().unwrap() {
        let id = e["model"].as_str().unwrap();
        if !files.iter().any(|(m, _)| m == id) {
            files.push((id.to_string(), GgufFile::open(model(id)).unwrap()));
        }
        let file = &files.iter().find(|(m, _)| m == id).unwrap().1;
        let name = e["tensor"].as_str().unwrap();
        let t = file
            .tensor(name)
            .unwrap_or_else(|| panic!("{id}: no tensor {name}"));
        assert_eq!(t.ty.name(), e["type"].as_str().unwrap(), "{id} {name}");
        assert_eq!(t.n_elements(), e["n_elements"].as_u64().unwrap());
        let mut values = vec![0f32; t.n_elements() as usize];
        llamart::quant::dequantize(t.ty, file.tensor_data(t), &mut values).unwrap();
        let first8: Vec<f64> = e["first8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // The fixture writes each f32 as the shortest decimal that reads back as it.
        for (got, want) in values.iter().zip(&first8) {
            assert_eq!(
                got.to_bits(),
                (*want as f32).to_bits(),
                "{id} {name}: first values"
            );
        }
        let digest = Sha256::digest(bytemuck_bytes(&values));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            e["f32_sha256"].as_str().unwrap(),
            "{id} {name} ({})",
            t.ty
        );
        checked.push(format!("{id}:{}", t.ty));
    }
    for ty in ["q4_1", "q8_0", "f32", "q5_0", "q4_K", "q6_K"] {
        assert!(
            checked.iter().any(|c| c.ends_with(&format!(":{ty}"))),
            "no real {ty} tensor checked"
        );
    }
}

fn bytemuck_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
