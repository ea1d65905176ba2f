//! Quantized dot products: weight rows in their stored block format against activations that
//! were quantized once per matrix product to the 8-bit format ggml pairs with the weight type (its
//! `vec_dot_type`): Q8_1 for Q4_1/Q5_1, Q8_0 for Q4_0/Q5_0/Q8_0 and Q8_K for the K-quants.
//!
//! Every block product is an exact integer sum scaled once in f32, so the result differs from
//! `dequantize(w) · dequantize(x_q)` only by f32 rounding; the error against the f32 activations is
//! that of quantizing them, as in llama.cpp.
//!
//! Three implementations share one interface, a [`TileFn`] per weight type that multiplies a run
//! of weight rows with every token's activations:
//!
//! - [`portable`]: plain Rust, the reference the SIMD versions are tested against;
//! - `avx2`: 256-bit AVX2 (`vpmaddubsw`/`vpmaddwd`), with F16C and FMA;
//! - `avx512`: AVX-512 VNNI (`vpdpbusd`) and byte masks.
//!
//! The best one the CPU runs is picked once per process by [`Kernels::best`].

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod portable;
#[cfg(target_arch = "x86_64")]
mod simd;

use std::sync::OnceLock;

use crate::quant::{f16_to_f32, BlockQ8K, BlockQ8_0, BlockQ8_1, QK, QK_K};
use crate::GgmlType;

/// An instruction set the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Level {
    /// Every level, best last.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// Whether this CPU can run the level's kernels.
    pub fn available(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The 8-bit format activations are quantized to for a weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActFormat {
    /// ggml's `vec_dot_type` of `ty`, for the types with a quantized kernel; `None` for the ones
    /// multiplied in f32.
    pub fn for_weight(ty: GgmlType) -> Option<ActFormat> {
        use GgmlType::*;
        match ty {
            Q4_0 | Q5_0 | Q8_0 => Some(ActFormat::Q8_0),
            Q4_1 | Q5_1 => Some(ActFormat::Q8_1),
            Q4_K | Q5_K | Q6_K => Some(ActFormat::Q8K),
            _ => None,
        }
    }

    fn block_len(self) -> usize {
        match self {
            ActFormat::Q8_0 | ActFormat::Q8_1 => QK,
            ActFormat::Q8K => QK_K,
        }
    }
}

/// Quantized activations of one matrix product, as the kernels read them.
///
/// Token `t`'s blocks start at `blocks + t * row_bytes`. For Q8_0 and Q8_1, `d[t * nb + b]` is
/// block `b`'s scale in f32 and `s[t * nb + b]` is `d * sum(qs)` (exact, not Q8_1's f16 `s`), so
/// the kernels convert nothing per block and per token; Q8_K blocks carry an f32 scale and
/// `bsums` themselves and leave both empty.
#[derive(Clone, Copy, Debug)]
pub struct ActView {
    pub blocks: *const u8,
    pub row_bytes: usize,
    pub d: *const f32,
    pub s: *const f32,
    /// Blocks per token.
    pub nb: usize,
    pub n_tokens: usize,
}

// SAFETY: a view is only read, and the buffers it points into outlive every use (the kernels run
// inside the call that made it).
unsafe impl Send for ActView {}
unsafe impl Sync for ActView {}

/// Multiplies `w.len() / row_bytes` weight rows with every token of `x`: row `r` and token `t`
/// give `y[t * y_stride + r]`.
///
/// # Safety
/// `x` must point at live activations in the format [`ActFormat::for_weight`] names for the
/// kernel's weight type, with as many values per token as a weight row has; `w.len()` must be a
/// multiple of `row_bytes`, and `y` valid for those writes.
pub type TileFn = unsafe fn(w: &[u8], row_bytes: usize, x: &ActView, y: *mut f32, y_stride: usize);

/// One [`TileFn`] per weight type with a quantized kernel, all for one [`Level`].
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    pub level: Level,
    q4_0: TileFn,
    q4_1: TileFn,
    q5_0: TileFn,
    q5_1: TileFn,
    q8_0: TileFn,
    q4_k: TileFn,
    q5_k: TileFn,
    q6_k: TileFn,
}

impl Kernels {
    /// The kernels of the best level this CPU runs, detected on first use.
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<Kernels> = OnceLock::new();
        BEST.get_or_init(|| {
            Level::ALL
                .iter()
                .rev()
                .find_map(|&l| Kernels::for_level(l))
                .expect("the portable level is always available")
        })
    }

    /// The kernels of `level`, or `None` where this CPU lacks its instructions.
    pub fn for_level(level: Level) -> Option<Kernels> {
        if !level.available() {
            return None;
        }
        match level {
            Level::Portable => Some(portable::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => Some(avx2::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => Some(avx512::KERNELS),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }

    /// The kernel for weights of type `ty`, if it has a quantized one.
    pub fn tile(&self, ty: GgmlType) -> Option<TileFn> {
        use GgmlType::*;
        Some(match ty {
            Q4_0 => self.q4_0,
            Q4_1 => self.q4_1,
            Q5_0 => self.q5_0,
            Q5_1 => self.q5_1,
            Q8_0 => self.q8_0,
            Q4_K => self.q4_k,
            Q5_K => self.q5_k,
            Q6_K => self.q6_k,
            _ => return None,
        })
    }
}

/// Buffers for quantized activations, sized once for the largest matrix product of a plan.
#[derive(Default)]
pub struct QuantActs {
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    q8_k: Vec<BlockQ8K>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QuantActs {
    /// Room for `max_tokens` rows of up to `max_k` values in each format that `weight_types`
    /// need.
    pub fn new(
        max_k: usize,
        max_tokens: usize,
        weight_types: impl IntoIterator<Item = GgmlType>,
    ) -> Self {
        let mut acts = QuantActs::default();
        let n = max_k * max_tokens;
        for ty in weight_types {
            match ActFormat::for_weight(ty) {
                Some(ActFormat::Q8_0) if acts.q8_0.is_empty() => {
                    acts.q8_0 = vec![BlockQ8_0::default(); n / QK]
                }
                Some(ActFormat::Q8_1) if acts.q8_1.is_empty() => {
                    acts.q8_1 = vec![BlockQ8_1::default(); n / QK]
                }
                Some(ActFormat::Q8K) if acts.q8_k.is_empty() => {
                    acts.q8_k = vec![BlockQ8K::default(); n / QK_K]
                }
                _ => {}
            }
        }
        if !acts.q8_0.is_empty() || !acts.q8_1.is_empty() {
            acts.d = vec![0.0; n / QK];
            acts.s = vec![0.0; n / QK];
        }
        acts
    }

    /// Quantizes tokens `tokens` of `x` (rows of `k` values) to `format` in place; `view` then
    /// reads them. Rows are independent, so several threads may quantize disjoint ranges of one
    /// call at once through [`QuantActs::quantize_rows_raw`].
    pub fn quantize(&mut self, level: Level, format: ActFormat, x: &[f32], k: usize) -> ActView {
        let n_tokens = x.len() / k;
        let raw = self.raw(format, k, n_tokens);
        // SAFETY: `raw` covers n_tokens rows, and nothing else refers to the buffers.
        unsafe { raw.quantize_rows(level, x, 0..n_tokens) };
        raw.view
    }

    /// A view of the buffers for `n_tokens` rows of `k` values in `format`, through which rows can
    /// be quantized from several threads.
    ///
    /// # Panics
    /// If the buffers were not sized for that many values in that format.
    pub fn raw(&mut self, format: ActFormat, k: usize, n_tokens: usize) -> RawActs {
        let nb = k / format.block_len();
        assert!(
            k % format.block_len() == 0,
            "{k} values are not whole {format:?} blocks"
        );
        let (blocks, row_bytes, have) = match format {
            ActFormat::Q8_0 => (
                self.q8_0.as_mut_ptr().cast::<u8>(),
                nb * size_of::<BlockQ8_0>(),
                self.q8_0.len(),
            ),
            ActFormat::Q8_1 => (
                self.q8_1.as_mut_ptr().cast::<u8>(),
                nb * size_of::<BlockQ8_1>(),
                self.q8_1.len(),
            ),
            ActFormat::Q8K => (
                self.q8_k.as_mut_ptr().cast::<u8>(),
                nb * size_of::<BlockQ8K>(),
                self.q8_k.len(),
            ),
        };
        assert!(
            nb * n_tokens <= have,
            "activation buffers sized for {have} {format:?} blocks, {} needed",
            nb * n_tokens
        );
        RawActs {
            format,
            view: ActView {
                blocks,
                row_bytes,
                d: self.d.as_mut_ptr(),
                s: self.s.as_mut_ptr(),
                nb,
                n_tokens,
            },
        }
    }
}

/// Quantized-activation buffers that disjoint row ranges may be written through concurrently.
#[derive(Clone, Copy, Debug)]
pub struct RawActs {
    format: ActFormat,
    pub view: ActView,
}

impl RawActs {
    /// Quantizes rows `tokens` of `x` (all of its rows, `view.nb` blocks each).
    ///
    /// # Safety
    /// No other thread may touch the same rows meanwhile, and the buffers must still be alive.
    pub unsafe fn quantize_rows(&self, level: Level, x: &[f32], tokens: std::ops::Range<usize>) {
        match level {
            Level::Portable => quantize_rows_generic(self, x, tokens),
            // The same code compiled for AVX2 vectorizes the rounding, which plain x86-64 does in
            // a libm call per value.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => quantize_rows_avx2(self, x, tokens),
            #[cfg(not(target_arch = "x86_64"))]
            _ => quantize_rows_generic(self, x, tokens),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_rows_avx2(acts: &RawActs, x: &[f32], tokens: std::ops::Range<usize>) {
    quantize_rows_generic(acts, x, tokens)
}

/// Quantizes with the per-block functions of `crate::quant` (bit-exact with ggml's reference
/// quantizers) and fills the f32 side arrays.
#[inline(always)]
unsafe fn quantize_rows_generic(acts: &RawActs, x: &[f32], tokens: std::ops::Range<usize>) {
    let v = &acts.view;
    let k = v.nb * acts.format.block_len();
    for t in tokens {
        let row = &x[t * k..(t + 1) * k];
        let blocks = v.blocks.add(t * v.row_bytes);
        match acts.format {
            ActFormat::Q8_0 | ActFormat::Q8_1 => {
                let d = std::slice::from_raw_parts_mut(v.d.cast_mut().add(t * v.nb), v.nb);
                let s = std::slice::from_raw_parts_mut(v.s.cast_mut().add(t * v.nb), v.nb);
                for (b, chunk) in row.chunks_exact(QK).enumerate() {
                    let chunk: &[f32; QK] = chunk.try_into().expect("QK values");
                    let (scale, qs) = if acts.format == ActFormat::Q8_0 {
                        let q = BlockQ8_0::quantize(chunk);
                        blocks.cast_mut().cast::<BlockQ8_0>().add(b).write(q);
                        (q.d, q.qs)
                    } else {
                        let q = BlockQ8_1::quantize(chunk);
                        blocks.cast_mut().cast::<BlockQ8_1>().add(b).write(q);
                        (q.d, q.qs)
                    };
                    d[b] = f16_to_f32(scale);
                    s[b] = d[b] * qs.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
                }
            }
            ActFormat::Q8K => {
                for (b, chunk) in row.chunks_exact(QK_K).enumerate() {
                    let chunk: &[f32; QK_K] = chunk.try_into().expect("QK_K values");
                    blocks
                        .cast_mut()
                        .cast::<BlockQ8K>()
                        .add(b)
                        .write(BlockQ8K::quantize(chunk));
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
