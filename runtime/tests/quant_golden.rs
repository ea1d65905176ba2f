//! Bit-exact checks of `llamart::quant` against fixtures from `tools/gen-quant-fixtures.py`
//! (gguf-py's NumPy reference; see `tests/fixtures/quant/README.md`). No Python at test time.

use std::path::PathBuf;

use llamart::quant::{self, BlockQ8K, BlockQ8_0, BlockQ8_1};
use llamart::GgmlType;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Asserts bit equality, reporting the first few mismatches with their block and position.
fn assert_bits_eq(what: &str, block_len: usize, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
        .take(8)
        .map(|(i, (g, w))| {
            format!(
                "[{i}] (block {}, +{}): got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                i / block_len,
                i % block_len,
                g.to_bits(),
                w.to_bits()
            )
        })
        .collect();
    assert!(bad.is_empty(), "{what}: values differ:\n{}", bad.join("\n"));
}

const DEQUANT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn check_dequant(ty: GgmlType) {
    let src = fixture(&format!("{}.blocks.bin", ty.name()));
    let want = f32s(&fixture(&format!("{}.f32.bin", ty.name())));
    assert!(!want.is_empty());
    assert!(quant::can_dequantize(ty));

    let mut got = vec![f32::NAN; want.len()];
    quant::dequantize(ty, &src, &mut got).unwrap();
    assert_bits_eq(ty.name(), ty.block_len(), &got, &want);

    // Same answer from a misaligned copy of the bytes.
    let mut shifted = vec![0u8; src.len() + 1];
    shifted[1..].copy_from_slice(&src);
    let mut got = vec![f32::NAN; want.len()];
    quant::dequantize(ty, &shifted[1..], &mut got).unwrap();
    assert_bits_eq(
        &format!("{} (unaligned)", ty.name()),
        ty.block_len(),
        &got,
        &want,
    );

    // And block-row by block-row, as the CPU kernels call it.
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    let rows = if bl == 1 { 64 } else { 1 };
    for (i, chunk) in src.chunks(bb * rows).enumerate() {
        let n = chunk.len() / bb * bl;
        let mut row = vec![0.0f32; n];
        quant::dequantize(ty, chunk, &mut row).unwrap();
        let start = i * rows * bl;
        assert_bits_eq(
            &format!("{} (row {i})", ty.name()),
            bl,
            &row,
            &want[start..start + n],
        );
    }
}

macro_rules! dequant_tests {
    ($($test:ident: $ty:ident,)*) => {
        $(
            #[test]
            fn $test() {
                check_dequant(GgmlType::$ty);
            }
        )*
    };
}

dequant_tests! {
    dequant_f32: F32,
    dequant_f16: F16,
    dequant_bf16: BF16,
    dequant_q4_0: Q4_0,
    dequant_q4_1: Q4_1,
    dequant_q5_0: Q5_0,
    dequant_q5_1: Q5_1,
    dequant_q8_0: Q8_0,
    dequant_q8_1: Q8_1,
    dequant_q2_k: Q2_K,
    dequant_q3_k: Q3_K,
    dequant_q4_k: Q4_K,
    dequant_q5_k: Q5_K,
    dequant_q6_k: Q6_K,
    dequant_q8_k: Q8_K,
}

#[test]
fn every_dequantizable_type_has_a_fixture() {
    for &ty in GgmlType::ALL {
        assert_eq!(
            quant::can_dequantize(ty),
            DEQUANT_TYPES.contains(&ty),
            "{ty}"
        );
    }
}

/// Quantizes the fixture input through both the byte-level and the typed API and compares the
/// resulting bytes with the fixture.
fn check_quant<B: bytemuck::Pod>(ty: GgmlType, typed: fn(&[f32], &mut [B])) {
    let x = f32s(&fixture(&format!("{}.quant-in.f32.bin", ty.name())));
    let want = fixture(&format!("{}.quant-out.bin", ty.name()));
    assert_eq!(want.len() as u64, ty.bytes_for(x.len() as u64).unwrap());

    let report = |what: &str, got: &[u8]| {
        let bb = ty.block_bytes();
        let bad: Vec<String> = got
            .chunks(bb)
            .zip(want.chunks(bb))
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .take(4)
            .map(|(i, (g, w))| {
                let first = g.iter().zip(w.iter()).position(|(a, b)| a != b).unwrap();
                format!(
                    "block {i}: first differing byte {first}: got {:#04x}, want {:#04x}",
                    g[first], w[first]
                )
            })
            .collect();
        assert!(bad.is_empty(), "{} {what}:\n{}", ty.name(), bad.join("\n"));
    };

    let mut got = vec![0u8; want.len()];
    quant::quantize(ty, &x, &mut got).unwrap();
    report("quantize()", &got);

    let mut shifted = vec![0u8; want.len() + 1];
    quant::quantize(ty, &x, &mut shifted[1..]).unwrap();
    report("quantize() unaligned", &shifted[1..]);

    let mut blocks = vec![B::zeroed(); x.len() / ty.block_len()];
    typed(&x, &mut blocks);
    report("typed", bytemuck::cast_slice(&blocks));
}

#[test]
fn quant_q8_0() {
    check_quant::<BlockQ8_0>(GgmlType::Q8_0, quant::quantize_q8_0);
}

#[test]
fn quant_q8_1() {
    check_quant::<BlockQ8_1>(GgmlType::Q8_1, quant::quantize_q8_1);
}

#[test]
fn quant_q8_k() {
    check_quant::<BlockQ8K>(GgmlType::Q8_K, quant::quantize_q8_k);
}

/// Quantizing and dequantizing Q8_0 stays within half a quantization step.
#[test]
fn q8_0_round_trip_error_is_bounded() {
    let x = f32s(&fixture("q8_0.quant-in.f32.bin"));
    let mut blocks = vec![BlockQ8_0::default(); x.len() / 32];
    quant::quantize_q8_0(&x, &mut blocks);
    let mut y = vec![0.0f32; x.len()];
    quant::dequantize_q8_0(&blocks, &mut y);
    for (b, (xs, ys)) in blocks.iter().zip(x.chunks(32).zip(y.chunks(32))) {
        let d = b.d.to_f32();
        let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        // Skip blocks whose f16 scale under- or overflowed (deliberate edge cases).
        if !d.is_finite() || d == 0.0 || (d - amax / 127.0).abs() > amax / 127.0 * 1e-3 {
            continue;
        }
        for (a, b) in xs.iter().zip(ys) {
            assert!(
                (a - b).abs() <= 0.5 * d * 1.01 + amax * 1e-3,
                "{a} vs {b} (d = {d})"
            );
        }
    }
}
