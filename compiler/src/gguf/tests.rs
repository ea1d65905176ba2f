use super::writer::GgufWriter;
use super::*;

fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String("llama".into()))
        .metadata("u8", Value::U8(7))
        .metadata("i8", Value::I8(-7))
        .metadata("u16", Value::U16(65535))
        .metadata("i16", Value::I16(-300))
        .metadata("u32", Value::U32(1 << 31))
        .metadata("i32", Value::I32(-1))
        .metadata("f32", Value::F32(1e-5))
        .metadata("bool", Value::Bool(true))
        .metadata("u64", Value::U64(u64::MAX))
        .metadata("i64", Value::I64(i64::MIN))
        .metadata("f64", Value::F64(0.25))
        .metadata(
            "strings",
            Value::Array(Array::String(vec!["a".into(), "é".into(), "".into()])),
        )
        .metadata(
            "nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::I32(vec![]),
                Array::I32(vec![3]),
            ])),
        )
        .tensor_f32("a", &[2, 3], &[1., 2., 3., 4., 5., 6.])
        .tensor("b", &[32], GgmlType::Q8_0, vec![0u8; 34]);
    w
}

#[test]
fn round_trips_every_value_type_and_tensor() {
    let f = GgufFile::from_bytes(sample().to_bytes()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get("i8"), Some(&Value::I8(-7)));
    assert_eq!(f.get("u64").and_then(Value::as_u64), Some(u64::MAX));
    assert_eq!(f.get("i64").and_then(Value::as_i64), Some(i64::MIN));
    assert_eq!(f.get("i32").and_then(Value::as_u64), None);
    assert_eq!(f.get("f32"), Some(&Value::F32(1e-5)));
    assert_eq!(
        f.get("nested"),
        Some(&Value::Array(Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::I32(vec![]),
            Array::I32(vec![3])
        ])))
    );
    assert_eq!(f.metadata().len(), 14);
    let a = f.tensor("a").unwrap();
    assert_eq!(
        (a.dims.as_slice(), a.ty, a.bytes),
        (&[2u64, 3][..], GgmlType::F32, 24)
    );
    let data: Vec<f32> = f
        .tensor_data(a)
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data, [1., 2., 3., 4., 5., 6.]);
    let b = f.tensor("b").unwrap();
    assert_eq!(b.offset % f.alignment, 0);
    assert_eq!(f.tensor_data(b).len(), 34);
}

#[test]
fn every_truncation_is_a_clean_error() {
    let bytes = sample().to_bytes();
    for len in 0..bytes.len() {
        let err =
            GgufFile::from_bytes(bytes[..len].to_vec()).expect_err(&format!("truncated to {len}"));
        let ok = matches!(
            err,
            GgufError::BadMagic { .. }
                | GgufError::Truncated { .. }
                | GgufError::CountTooLarge { .. }
                | GgufError::TensorOutOfFile { .. }
        );
        assert!(ok, "truncated to {len}: unexpected {err}");
    }
}

/// Offset of the first byte after the fixed header (magic, version, two counts).
const COUNTS_END: usize = 24;

fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Result<GgufFile, GgufError> {
    let mut bytes = sample().to_bytes();
    f(&mut bytes);
    GgufFile::from_bytes(bytes)
}

#[test]
fn huge_counts_fail_before_allocating() {
    let err = patched(|b| b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, GgufError::CountTooLarge { offset: 24, count, .. } if count == 1 << 60),
        "{err}"
    );
    let err = patched(|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())).unwrap_err();
    assert!(matches!(err, GgufError::CountTooLarge { .. }), "{err}");
    // The first key's length claims 4 GB.
    let err =
        patched(|b| b[COUNTS_END..COUNTS_END + 8].copy_from_slice(&(4u64 << 30).to_le_bytes()))
            .unwrap_err();
    assert!(
        matches!(err, GgufError::Truncated { offset: 32, needed, .. } if needed == 4 << 30),
        "{err}"
    );
}

#[test]
fn rejects_bad_magic_and_versions() {
    assert!(matches!(
        patched(|b| b[0] = b'X').unwrap_err(),
        GgufError::BadMagic { .. }
    ));
    for (version, hint) in [
        (1u32, "version 1"),
        (4, ""),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let err = patched(|b| b[4..8].copy_from_slice(&version.to_le_bytes())).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion { .. }), "{err}");
        assert!(err.to_string().contains(hint), "{err}");
    }
    let mut v2 = sample().to_bytes();
    v2[4] = 2;
    assert_eq!(GgufFile::from_bytes(v2).unwrap().version, 2);
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn rejects_bad_values() {
    let bytes = sample().to_bytes();
    // The bool key is followed by its type (7) and value byte.
    let at = find(&bytes, b"bool") + 4 + 4;
    let err = patched(|b| b[at] = 2).unwrap_err();
    assert!(matches!(err, GgufError::BadBool { value: 2, .. }), "{err}");
    let err = patched(|b| b[at - 4] = 99).unwrap_err();
    assert!(
        matches!(err, GgufError::UnknownValueType { type_id: 99, .. }),
        "{err}"
    );
    let at = find(&bytes, "é".as_bytes());
    let err = patched(|b| b[at] = 0xff).unwrap_err();
    assert!(matches!(err, GgufError::InvalidUtf8 { .. }), "{err}");
    let at = find(&bytes, b"i16");
    let err = patched(|b| b[at..at + 3].copy_from_slice(b"u16")).unwrap_err();
    assert!(
        matches!(err, GgufError::DuplicateKey { ref key, .. } if key == "u16"),
        "{err}"
    );
}

#[test]
fn rejects_deep_nesting() {
    let mut inner = Array::I32(vec![1]);
    for _ in 0..10 {
        inner = Array::Array(vec![inner]);
    }
    let mut w = GgufWriter::new();
    w.metadata("deep", Value::Array(inner));
    let err = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(err, GgufError::NestingTooDeep { .. }), "{err}");
}

#[test]
fn checks_alignment_metadata() {
    let mut w = GgufWriter::new();
    w.metadata("general.alignment", Value::U32(64))
        .tensor_f32("t", &[3], &[1., 2., 3.])
        .tensor_f32("u", &[1], &[4.]);
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    assert_eq!(f.tensor("u").unwrap().offset, 64);
    for bad in [Value::U32(48), Value::U32(0), Value::U64(32)] {
        let mut w = GgufWriter::new();
        w.metadata("general.alignment", bad);
        let err = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
        assert!(matches!(err, GgufError::BadAlignment { .. }), "{err}");
    }
}

fn tensor_header_at(bytes: &[u8], name: &str) -> usize {
    find(bytes, name.as_bytes()) + name.len()
}

#[test]
fn rejects_bad_tensor_infos() {
    let bytes = sample().to_bytes();
    // Tensor "b": name, n_dims (u32), one dim (u64), type (u32), offset (u64).
    let at = tensor_header_at(&bytes, "\x01\x00\x00\x00\x00\x00\x00\x00b");
    let err = patched(|b| b[at..at + 4].copy_from_slice(&5u32.to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, GgufError::TooManyDims { n_dims: 5, .. }),
        "{err}"
    );
    let err = patched(|b| b[at + 12..at + 16].copy_from_slice(&4u32.to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, GgufError::UnknownTensorType { type_id: 4, .. }),
        "{err}"
    );
    let err = patched(|b| b[at + 4..at + 12].copy_from_slice(&33u64.to_le_bytes())).unwrap_err();
    assert!(
        matches!(err, GgufError::PartialBlock { row_len: 33, .. }),
        "{err}"
    );
    let err =
        patched(|b| b[at + 4..at + 12].copy_from_slice(&(1u64 << 62).to_le_bytes())).unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfFile { .. }), "{err}");
    let err = patched(|b| b[at + 16..at + 24].copy_from_slice(&1u64.to_le_bytes())).unwrap_err();
    assert!(matches!(err, GgufError::MisalignedTensor { .. }), "{err}");
    let err = patched(|b| b[at + 16..at + 24].copy_from_slice(&(u64::MAX - 31).to_le_bytes()))
        .unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfFile { .. }), "{err}");
    let err = patched(|b| b[at + 16..at + 24].copy_from_slice(&0u64.to_le_bytes())).unwrap_err();
    assert!(matches!(err, GgufError::OverlappingTensors { .. }), "{err}");
    // Rename "b" to "a".
    let err = patched(|b| b[at - 1] = b'a').unwrap_err();
    assert!(
        matches!(err, GgufError::DuplicateTensor { ref name, .. } if name == "a"),
        "{err}"
    );
}

#[test]
fn shape_products_must_not_overflow() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[1 << 32, 1 << 32], GgmlType::F32, vec![]);
    let err = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(err, GgufError::ShapeOverflow { .. }), "{err}");
    let mut w = GgufWriter::new();
    w.tensor("t", &[1 << 62, 2], GgmlType::I8, vec![]);
    let err = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(err, GgufError::ShapeOverflow { .. }), "{err}");
}

#[test]
fn long_arrays_are_summarized_in_json() {
    let a = Array::U32((0..1000).collect());
    let j = a.to_json(64);
    assert_eq!(j["len"], 1000);
    assert_eq!(j["element_type"], "u32");
    assert_eq!(j["head"].as_array().unwrap().len(), 8);
    assert_eq!(Array::F32(vec![f32::NAN]).to_json(64)[0], "NaN");
}
