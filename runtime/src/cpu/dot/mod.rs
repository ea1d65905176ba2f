//! Quantized dot products: weight rows in their stored block format against activations that
//! were quantized once per matrix product to the 8-bit format ggml pairs with the weight type (its
//! `vec_dot_type`): Q8_1 for Q4_1/Q5_1, Q8_0 for Q4_0/Q5_0/Q8_0 and Q8_K for the K-quants.
//!
//! Every block product is an exact integer sum scaled once in f32, so the result differs from
//! `dequantize(w) · dequantize(x_q)` only by f32 rounding; the error against the f32 activations
//! is that of quantizing them, as in llama.cpp.
//!
//! Three implementations share one interface, a [`TileFn`] per weight type that multiplies a run
//! of weight rows with every token's activations, and a [`PackedFn`] per type with a packed
//! layout (all but Q2_K and Q3_K, which multiply f32) that does the same on rows the compiler
//! interleaved (see [`pack`]), which is much cheaper per block:
//!
//! - [`portable`]: plain Rust, the reference the SIMD versions are tested against (no packed
//!   kernels);
//! - `avx2`: 256-bit AVX2 (`vpmaddubsw`/`vpmaddwd`), with F16C and FMA;
//! - `avx512`: AVX-512 VNNI (`vpdpbusd`) and byte masks; its row kernels for the legacy types
//!   take two blocks per 512-bit instruction.
//!
//! The best one the CPU runs is picked once per process by [`Kernels::best`]. Each output
//! depends only on its row and token (never on how many tokens a call has), so prefill and decode
//! agree exactly.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod pack;
pub mod portable;
#[cfg(target_arch = "x86_64")]
mod simd;

use std::sync::OnceLock;

pub use pack::{Packed, PACK_ROWS};

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
    /// ggml's `vec_dot_type` of `ty`, the format its quantized kernel reads; `None` for the types
    /// without one.
    pub fn vec_dot_type(ty: GgmlType) -> Option<ActFormat> {
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
/// block `b`'s scale in f32 and `s[t * nb + b]` its exact sum `d * sum(qs)`, which the kernels
/// multiply the weights' offsets with (`m`, or `-8 d`, `-16 d`, `-128 d` for the symmetric
/// types, which makes them equal to ggml's integer sums of offset quants). Q8_1 blocks also
/// carry that sum rounded to f16, which ggml uses for `m`; the exact one is used instead because
/// the rounding is worth more than activation quantization on SmolLM2's golden cases (1.75 times
/// llama.cpp's KL divergence at its worst position rather than 0.93). The kernels thus convert
/// nothing per block and token. Q8_K blocks carry an f32 scale and `bsums` themselves and leave
/// both empty.
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
/// `x` must point at live activations in the format [`ActFormat::vec_dot_type`] names for the
/// kernel's weight type, with as many values per token as a weight row has; `w.len()` must be a
/// multiple of `row_bytes`, and `y` valid for those writes.
pub type TileFn = unsafe fn(w: &[u8], row_bytes: usize, x: &ActView, y: *mut f32, y_stride: usize);

/// Multiplies packed rows (see [`pack`]) with every token of `x`: `packed` holds whole groups
/// of [`PACK_ROWS`] rows, group `g` row `i` and token `t` give `y[t * y_stride + 8g + i]`.
///
/// # Safety
/// As for [`TileFn`], with `packed` made by [`pack::pack`] for the kernel's weight type.
pub type PackedFn = unsafe fn(packed: &[u8], x: &ActView, y: *mut f32, y_stride: usize);

/// One [`TileFn`] per weight type with a quantized kernel, and a [`PackedFn`] per packable type
/// where the level has one, all for one [`Level`].
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
    packed_q4_0: Option<PackedFn>,
    packed_q4_1: Option<PackedFn>,
    packed_q5_0: Option<PackedFn>,
    packed_q5_1: Option<PackedFn>,
    packed_q8_0: Option<PackedFn>,
    packed_q4_k: Option<PackedFn>,
    packed_q5_k: Option<PackedFn>,
    packed_q6_k: Option<PackedFn>,
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

    /// The packed kernel for weights of type `ty`, where this level has one.
    pub fn packed(&self, ty: GgmlType) -> Option<PackedFn> {
        use GgmlType::*;
        match ty {
            Q4_0 => self.packed_q4_0,
            Q4_1 => self.packed_q4_1,
            Q5_0 => self.packed_q5_0,
            Q5_1 => self.packed_q5_1,
            Q8_0 => self.packed_q8_0,
            Q4_K => self.packed_q4_k,
            Q5_K => self.packed_q5_k,
            Q6_K => self.packed_q6_k,
            _ => None,
        }
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
    /// Room for `max_tokens` rows of up to `max_k` values in each format that the weight types
    /// need, with the number of terms each takes (see [`crate::plan::Activations::terms`]).
    pub fn new(
        max_k: usize,
        max_tokens: usize,
        weight_terms: impl IntoIterator<Item = (GgmlType, u8)>,
    ) -> Self {
        // Values per format: the most any type reading it needs.
        let (mut q8_0, mut q8_1, mut q8_k) = (0, 0, 0);
        for (ty, terms) in weight_terms {
            let n = max_k * max_tokens * usize::from(terms);
            match ActFormat::vec_dot_type(ty) {
                Some(ActFormat::Q8_0) => q8_0 = n.max(q8_0),
                Some(ActFormat::Q8_1) => q8_1 = n.max(q8_1),
                Some(ActFormat::Q8K) => q8_k = n.max(q8_k),
                None => {}
            }
        }
        let side = q8_0.max(q8_1) / QK;
        QuantActs {
            q8_0: vec![BlockQ8_0::default(); q8_0 / QK],
            q8_1: vec![BlockQ8_1::default(); q8_1 / QK],
            q8_k: vec![BlockQ8K::default(); q8_k / QK_K],
            d: vec![0.0; side],
            s: vec![0.0; side],
        }
    }

    /// Quantizes all rows of `x` (`k` values each) to `format` in `terms` terms, for kernels to
    /// read through the returned view. ([`QuantActs::raw`] lets several threads quantize the
    /// rows of one call.)
    pub fn quantize(
        &mut self,
        level: Level,
        format: ActFormat,
        terms: u8,
        x: &[f32],
        k: usize,
    ) -> ActView {
        let n_tokens = x.len() / k;
        let raw = self.raw(format, terms, k, n_tokens);
        // SAFETY: `raw` covers n_tokens rows, and nothing else refers to the buffers.
        unsafe { raw.quantize_rows(level, x, 0..n_tokens) };
        raw.view
    }

    /// A view of the buffers for `n_tokens` rows of `k` values in `format`, each in `terms`
    /// terms (1 or 2), through which rows can be quantized from several threads. With two terms
    /// the view has `2 * n_tokens` rows: row `n_tokens + t` holds the residual of row `t`.
    ///
    /// # Panics
    /// If the buffers were not sized for that many values in that format, or `terms` is not 1
    /// or 2.
    pub fn raw(&mut self, format: ActFormat, terms: u8, k: usize, n_tokens: usize) -> RawActs {
        assert!(matches!(terms, 1 | 2), "{terms} activation terms");
        let nb = k / format.block_len();
        assert!(
            k.is_multiple_of(format.block_len()),
            "{k} values are not whole {format:?} blocks"
        );
        let rows = n_tokens * usize::from(terms);
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
        let side = if format == ActFormat::Q8K {
            usize::MAX
        } else {
            self.d.len()
        };
        assert!(
            nb * rows <= have && nb * rows <= side,
            "activation buffers sized for {have} {format:?} blocks, {} needed",
            nb * rows
        );
        RawActs {
            format,
            residual_at: (terms == 2).then_some(n_tokens),
            view: ActView {
                blocks,
                row_bytes,
                d: self.d.as_mut_ptr(),
                s: self.s.as_mut_ptr(),
                nb,
                n_tokens: rows,
            },
        }
    }
}

/// Quantized-activation buffers that disjoint row ranges may be written through concurrently.
#[derive(Clone, Copy, Debug)]
pub struct RawActs {
    format: ActFormat,
    /// With two terms, the row where token 0's residual goes (token `t`'s at `residual_at + t`).
    residual_at: Option<usize>,
    pub view: ActView,
}

impl RawActs {
    /// Quantizes rows `tokens` of `x` (all of its rows, `view.nb` blocks each), and their
    /// residuals where the view has two terms.
    ///
    /// # Safety
    /// No other thread may touch the same rows meanwhile, and the buffers must still be alive.
    pub unsafe fn quantize_rows(&self, level: Level, x: &[f32], tokens: std::ops::Range<usize>) {
        match level {
            Level::Portable => quantize_rows_generic(self, x, tokens),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => avx2::quantize_rows(self, x, tokens),
            #[cfg(not(target_arch = "x86_64"))]
            _ => quantize_rows_generic(self, x, tokens),
        }
    }
}

/// A block of 32 values quantized to 8 bits: the fields of Q8_0 and Q8_1 blocks, and the sum of
/// the quants.
pub(crate) struct Q8 {
    pub d: half::f16,
    /// Q8_1's `s`: the unrounded `d` times `sum`, rounded to f16.
    pub s: half::f16,
    pub qs: [i8; QK],
    pub sum: i32,
}

/// Quantizes with the per-block functions of `crate::quant` (bit-exact with ggml's reference
/// quantizers) and fills the f32 side arrays.
unsafe fn quantize_rows_generic(acts: &RawActs, x: &[f32], tokens: std::ops::Range<usize>) {
    quantize_rows_with(acts, x, tokens, |x| {
        let b = BlockQ8_1::quantize(x);
        let sum = b.qs.iter().map(|&q| i32::from(q)).sum();
        Q8 {
            d: b.d,
            s: b.s,
            qs: b.qs,
            sum,
        }
    })
}

/// Quantizes rows `tokens` of `x` with `q8` for 32-value blocks, or Q8_K's reference quantizer,
/// and with two terms quantizes each block's residual `x - d * q` (with `d` as the kernels read
/// it) the same way, into the residual rows.
///
/// # Safety
/// As for [`RawActs::quantize_rows`].
#[inline(always)]
unsafe fn quantize_rows_with(
    acts: &RawActs,
    x: &[f32],
    tokens: std::ops::Range<usize>,
    q8: impl Fn(&[f32; QK]) -> Q8,
) {
    let v = &acts.view;
    let k = v.nb * acts.format.block_len();
    for t in tokens {
        let row = &x[t * k..(t + 1) * k];
        let rows = std::iter::once(t).chain(acts.residual_at.map(|at| at + t));
        match acts.format {
            ActFormat::Q8_0 | ActFormat::Q8_1 => {
                for (b, chunk) in row.chunks_exact(QK).enumerate() {
                    let mut values: [f32; QK] = chunk.try_into().expect("QK values");
                    for r in rows.clone() {
                        let q = q8(&values);
                        let d = f16_to_f32(q.d);
                        let at = r * v.nb + b;
                        let blocks = v.blocks.add(r * v.row_bytes).cast_mut();
                        if acts.format == ActFormat::Q8_0 {
                            let block = BlockQ8_0 { d: q.d, qs: q.qs };
                            blocks.cast::<BlockQ8_0>().add(b).write(block);
                        } else {
                            let block = BlockQ8_1 {
                                d: q.d,
                                s: q.s,
                                qs: q.qs,
                            };
                            blocks.cast::<BlockQ8_1>().add(b).write(block);
                        }
                        v.d.cast_mut().add(at).write(d);
                        v.s.cast_mut().add(at).write(d * q.sum as f32);
                        for (x, &q) in values.iter_mut().zip(&q.qs) {
                            *x -= d * f32::from(q);
                        }
                    }
                }
            }
            ActFormat::Q8K => {
                for (b, chunk) in row.chunks_exact(QK_K).enumerate() {
                    let mut values: [f32; QK_K] = chunk.try_into().expect("QK_K values");
                    for r in rows.clone() {
                        let block = BlockQ8K::quantize(&values);
                        for (x, &q) in values.iter_mut().zip(&block.qs) {
                            *x -= block.d * f32::from(q);
                        }
                        let blocks = v.blocks.add(r * v.row_bytes).cast_mut();
                        blocks.cast::<BlockQ8K>().add(b).write(block);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
