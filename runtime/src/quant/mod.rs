//! GGML quantization formats: block layouts, dequantization and activation quantization.
//!
//! - [`blocks`]: `#[repr(C)]`, [`bytemuck::Pod`] layouts of every quantized block, as in ggml.
//! - [`dequantize`]: bytes of any supported type to f32, bit-exact with gguf-py's
//!   `gguf.quants.dequantize`, and so with ggml's `dequantize_row_*` (except that f16 NaNs keep
//!   their payload unquieted, as in NumPy; see [`f16_to_f32`]).
//! - [`quantize`]: f32 to Q8_0/Q8_1/Q8_K, bit-exact with ggml's `quantize_row_q8_*_ref`.
//!
//! The typed per-format functions ([`dequantize_q4_k`], [`quantize_q8_0`], ...) and the per-block
//! `dequantize`/`quantize` methods are public for kernels that want to work block by block.
//! `runtime/tests/quant_golden.rs` checks all of it against fixtures made by
//! `tools/gen-quant-fixtures.py`.

pub mod blocks;
mod dequant;
mod quantize;

pub use blocks::*;
pub use dequant::*;
pub use quantize::*;

use half::f16;

use crate::GgmlType;

/// Why a buffer could not be (de)quantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The type has no implementation in this direction.
    #[error("{op} is not supported for tensor type {ty}")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// `"dequantization"` or `"quantization"`.
        op: &'static str,
    },
    /// The element count does not fill whole blocks.
    #[error(
        "{n_elements} elements of type {ty} are not a whole number of {block_len}-element blocks"
    )]
    NotWholeBlocks {
        /// The type asked for.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// Elements per block of `ty`.
        block_len: usize,
    },
    /// The quantized buffer has the wrong size for the element count.
    #[error(
        "{n_elements} elements of type {ty} take {expected} bytes, but the buffer has {actual}"
    )]
    WrongLength {
        /// The type asked for.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// Bytes `n_elements` take in `ty`.
        expected: u64,
        /// Bytes given.
        actual: usize,
    },
}

/// Exact f16 to f32 conversion: every finite value and infinity maps to the same value, and NaNs
/// keep their sign and payload (signalling NaNs stay signalling), as NumPy's conversion does.
///
/// Pure integer arithmetic, so the result does not depend on the CPU's conversion instructions.
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    f16_bits_to_f32(h.to_bits())
}

/// [`f16_to_f32`] on raw bits.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1f;
    let man = u32::from(h & 0x03ff);
    let bits = if exp == 0x1f {
        0x7f80_0000 | (man << 13)
    } else if exp != 0 {
        ((exp + 112) << 23) | (man << 13)
    } else {
        // Zero or subnormal: man * 2^-24, exact in f32.
        (man as f32 * (1.0 / 16_777_216.0)).to_bits()
    };
    f32::from_bits(sign | bits)
}

/// Exact bf16 (raw bits) to f32 conversion: the bits shifted into the high half, NaNs included.
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Whether [`dequantize`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
    )
}

/// Whether [`quantize`] supports `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32 | GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K
    )
}

/// Checks that `n_elements` of `ty` take exactly `actual` bytes.
fn check_size(ty: GgmlType, n_elements: usize, actual: usize) -> Result<(), QuantError> {
    let expected = ty
        .bytes_for(n_elements as u64)
        .ok_or(QuantError::NotWholeBlocks {
            ty,
            n_elements,
            block_len: ty.block_len(),
        })?;
    if expected != actual as u64 {
        return Err(QuantError::WrongLength {
            ty,
            n_elements,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Dequantizes `dst.len()` elements of type `ty` from `src`, which must hold exactly
/// `ty.bytes_for(dst.len())` bytes at any alignment.
///
/// Never panics: an unsupported type, an element count that is not a whole number of blocks, or a
/// buffer of the wrong size is an error.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::Unsupported {
            ty,
            op: "dequantization",
        });
    }
    check_size(ty, dst.len(), src.len())?;
    use GgmlType::*;
    match ty {
        F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        F16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        BF16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        Q4_0 => via_blocks(src, dst, dequantize_q4_0),
        Q4_1 => via_blocks(src, dst, dequantize_q4_1),
        Q5_0 => via_blocks(src, dst, dequantize_q5_0),
        Q5_1 => via_blocks(src, dst, dequantize_q5_1),
        Q8_0 => via_blocks(src, dst, dequantize_q8_0),
        Q8_1 => via_blocks(src, dst, dequantize_q8_1),
        Q2_K => via_blocks(src, dst, dequantize_q2_k),
        Q3_K => via_blocks(src, dst, dequantize_q3_k),
        Q4_K => via_blocks(src, dst, dequantize_q4_k),
        Q5_K => via_blocks(src, dst, dequantize_q5_k),
        Q6_K => via_blocks(src, dst, dequantize_q6_k),
        Q8_K => via_blocks(src, dst, dequantize_q8_k),
        _ => unreachable!("can_dequantize covers exactly these"),
    }
    Ok(())
}

/// Runs a typed dequantizer over bytes whose size is already checked: in place when they are
/// aligned for `B`, otherwise one block at a time through an aligned copy.
#[inline]
fn via_blocks<B: QuantBlock>(src: &[u8], dst: &mut [f32], f: fn(&[B], &mut [f32])) {
    match bytemuck::try_cast_slice::<u8, B>(src) {
        Ok(blocks) => f(blocks, dst),
        Err(_) => {
            let bytes = std::mem::size_of::<B>();
            for (chunk, out) in src
                .chunks_exact(bytes)
                .zip(dst.chunks_exact_mut(B::BLOCK_LEN))
            {
                let block: B = bytemuck::pod_read_unaligned(chunk);
                f(std::slice::from_ref(&block), out);
            }
        }
    }
}

/// Quantizes `src` to type `ty` into `dst`, which must hold exactly `ty.bytes_for(src.len())`
/// bytes at any alignment. Supports F32 (a copy), Q8_0, Q8_1 and Q8_K; see [`quantize_q8_0`] and
/// friends for the exact semantics.
///
/// Never panics; errors like [`dequantize`]'s.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported {
            ty,
            op: "quantization",
        });
    }
    check_size(ty, src.len(), dst.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, x) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::Q8_0 => to_blocks(src, dst, quantize_q8_0),
        GgmlType::Q8_1 => to_blocks(src, dst, quantize_q8_1),
        GgmlType::Q8_K => to_blocks(src, dst, quantize_q8_k),
        _ => unreachable!("can_quantize covers exactly these"),
    }
    Ok(())
}

/// Runs a typed quantizer into bytes whose size is already checked, at any alignment.
#[inline]
fn to_blocks<B: QuantBlock>(src: &[f32], dst: &mut [u8], f: fn(&[f32], &mut [B])) {
    match bytemuck::try_cast_slice_mut::<u8, B>(dst) {
        Ok(blocks) => f(src, blocks),
        Err(_) => {
            let bytes = std::mem::size_of::<B>();
            for (x, out) in src
                .chunks_exact(B::BLOCK_LEN)
                .zip(dst.chunks_exact_mut(bytes))
            {
                let mut block = B::zeroed();
                f(x, std::slice::from_mut(&mut block));
                out.copy_from_slice(bytemuck::bytes_of(&block));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn block_sizes_match_ggml_type() {
        for &(ty, size, len) in blocks::LAYOUTS {
            assert_eq!(size, ty.block_bytes(), "{ty}");
            assert_eq!(len, ty.block_len(), "{ty}");
        }
    }

    #[test]
    fn every_supported_type_round_trips_zeros() {
        for &ty in GgmlType::ALL {
            let n = ty.block_len() * 2;
            let src = vec![0u8; ty.bytes_for(n as u64).unwrap() as usize];
            let mut dst = vec![1.0f32; n];
            let r = dequantize(ty, &src, &mut dst);
            assert_eq!(r.is_ok(), can_dequantize(ty), "{ty}");
            if r.is_ok() {
                // (-0.0 where the format subtracts an offset before scaling by zero.)
                assert!(dst.iter().all(|&v| v == 0.0), "{ty}");
            }
        }
    }

    #[test]
    fn unsupported_types_are_errors() {
        let mut out = [0.0f32; 256];
        let err = dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut out).unwrap_err();
        assert_eq!(
            err,
            QuantError::Unsupported {
                ty: GgmlType::IQ2_XXS,
                op: "dequantization"
            }
        );
        assert!(err.to_string().contains("iq2_xxs"), "{err}");
        assert!(dequantize(GgmlType::I32, &[0u8; 4], &mut out[..1]).is_err());
        let err = quantize(GgmlType::Q4_K, &[0.0; 256], &mut [0u8; 144]).unwrap_err();
        assert!(err.to_string().contains("q4_K"), "{err}");
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut out = [0.0f32; 64];
        let err = dequantize(GgmlType::Q4_0, &[0u8; 35], &mut out).unwrap_err();
        assert_eq!(
            err,
            QuantError::WrongLength {
                ty: GgmlType::Q4_0,
                n_elements: 64,
                expected: 36,
                actual: 35
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("q4_0") && msg.contains("36") && msg.contains("35"),
            "{msg}"
        );
        let err = dequantize(GgmlType::Q4_K, &[0u8; 144], &mut out).unwrap_err();
        assert_eq!(
            err,
            QuantError::NotWholeBlocks {
                ty: GgmlType::Q4_K,
                n_elements: 64,
                block_len: 256
            }
        );
        assert!(err.to_string().contains("256"), "{err}");
        assert!(dequantize(GgmlType::F16, &[0u8; 3], &mut out[..1]).is_err());
        assert!(dequantize(GgmlType::F32, &[], &mut out[..1]).is_err());
        // Empty is fine.
        assert!(dequantize(GgmlType::Q6_K, &[], &mut []).is_ok());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 31], &mut [0u8; 34]).is_err());
        assert!(quantize(GgmlType::Q8_K, &[0.0; 256], &mut [0u8; 291]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // Every byte pattern is a valid block; exercise extremes and misalignment.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut bytes = vec![0u8; 292 * 4 + 1];
        for b in &mut bytes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        for &ty in GgmlType::ALL.iter().filter(|&&t| can_dequantize(t)) {
            let n = ty.block_len() * 4;
            let len = ty.bytes_for(n as u64).unwrap() as usize;
            let mut out = vec![0.0f32; n];
            for off in [0, 1] {
                dequantize(ty, &bytes[off..off + len], &mut out).unwrap();
            }
            dequantize(ty, &vec![0xff; len], &mut out).unwrap();
        }
        let weird = [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            -0.0,
        ];
        let x: Vec<f32> = weird.iter().copied().cycle().take(512).collect();
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q8_1,
            GgmlType::Q8_K,
            GgmlType::F32,
        ] {
            let mut dst = vec![0u8; ty.bytes_for(512).unwrap() as usize + 1];
            let len = dst.len() - 1;
            quantize(ty, &x, &mut dst[1..]).unwrap();
            quantize(ty, &x, &mut dst[..len]).unwrap();
        }
    }

    #[test]
    fn unaligned_source_matches_aligned() {
        let mut blocks = vec![BlockQ4K::zeroed(); 3];
        for (i, b) in blocks.iter_mut().enumerate() {
            let bytes = bytemuck::bytes_of_mut(b);
            for (j, v) in bytes.iter_mut().enumerate() {
                *v = (i * 31 + j * 7) as u8;
            }
            b.d = f16::from_f32(0.01);
            b.dmin = f16::from_f32(-0.02);
        }
        let mut expect = vec![0.0f32; 3 * QK_K];
        dequantize_q4_k(&blocks, &mut expect);
        let mut shifted = vec![0u8; 3 * 144 + 1];
        shifted[1..].copy_from_slice(bytemuck::cast_slice(&blocks));
        let mut got = vec![0.0f32; 3 * QK_K];
        dequantize(GgmlType::Q4_K, &shifted[1..], &mut got).unwrap();
        assert_eq!(
            bytemuck::cast_slice::<f32, u32>(&got),
            bytemuck::cast_slice::<f32, u32>(&expect)
        );
    }

    #[test]
    fn f16_conversion_is_exact() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let ours = f16_bits_to_f32(bits);
            if h.is_nan() {
                assert!(ours.is_nan());
                assert_eq!(ours.to_bits() >> 31, u32::from(bits >> 15));
                assert_eq!(
                    ours.to_bits() & 0x007f_ffff,
                    u32::from(bits & 0x3ff) << 13,
                    "{bits:#x}"
                );
            } else {
                assert_eq!(ours.to_bits(), h.to_f32().to_bits(), "{bits:#x}");
            }
        }
    }

    #[test]
    fn q3_k_scale_unpacking() {
        // Scale j = j + 10 packed by hand as ggml's quantizer does.
        let mut packed = [0u8; 12];
        for j in 0..16 {
            let l = (j + 10) as u8;
            if j < 8 {
                packed[j] = l & 0xF;
            } else {
                packed[j - 8] |= (l & 0xF) << 4;
            }
            packed[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        let want: Vec<u8> = (10..26).collect();
        assert_eq!(unpack_q3_k_scales(&packed).to_vec(), want);
    }

    #[test]
    fn q4_k_scale_min_unpacking() {
        // Pack sc = 40 + j, m = 20 + j as quantize_row_q4_K_ref does.
        let mut q = [0u8; 12];
        for j in 0..8 {
            let (ls, lm) = (40 + j as u8, 20 + j as u8);
            if j < 4 {
                q[j] = ls;
                q[j + 4] = lm;
            } else {
                q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                q[j - 4] |= (ls >> 4) << 6;
                q[j] |= (lm >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (40 + j as u8, 20 + j as u8), "{j}");
        }
    }
}
