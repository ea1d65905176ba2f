//! Every level's kernels against the f32 reference (dequantized weights times dequantized
//! activations, in f64) and against each other, on random blocks.

use super::*;
use crate::quant::dequantize;

/// xorshift64*: deterministic, dependency-free test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Byte offsets of the f16 scale fields of one block (`d` first, then `m`/`dmin` where the type
/// has one).
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q6_K => &[208],
        _ => unreachable!("no quantized kernel for {ty}"),
    }
}

/// `rows` random rows of `k` values of type `ty`: random quant bytes (every bit pattern of
/// quants, high bits and sub-block scales) with sane f16 scales, so the products stay finite.
pub(crate) fn random_weights(rng: &mut Rng, ty: GgmlType, rows: usize, k: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..rows * ty.bytes_for(k as u64).unwrap() as usize)
        .map(|_| rng.next() as u8)
        .collect();
    let fields = scale_fields(ty);
    for block in w.chunks_exact_mut(ty.block_bytes()) {
        for (i, &at) in fields.iter().enumerate() {
            let v = if i == 0 {
                rng.uniform(0.001, 0.05)
            } else {
                rng.uniform(-0.1, 0.1)
            };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    w
}

pub(crate) fn random_activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect()
}

/// The activations as the kernels see them, dequantized back to f32.
fn dequantized_acts(x: &ActView, format: ActFormat) -> Vec<f32> {
    let ty = match format {
        ActFormat::Q8_0 => GgmlType::Q8_0,
        ActFormat::Q8_1 => GgmlType::Q8_1,
        ActFormat::Q8K => GgmlType::Q8_K,
    };
    let k = x.nb * format.block_len();
    let mut out = vec![0.0; k * x.n_tokens];
    for (t, o) in out.chunks_exact_mut(k).enumerate() {
        // SAFETY: the view covers n_tokens rows of row_bytes bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(x.blocks.add(t * x.row_bytes), x.row_bytes) };
        dequantize(ty, bytes, o).unwrap();
    }
    out
}

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Runs one level's kernel for `ty` on a `rows x k` matrix and `n_tokens` tokens; returns the
/// output (token-major, `rows` wide) and the f64 references: against the quantized activations
/// and against the f32 ones, with the error bound of each.
struct Case {
    got: Vec<f32>,
    exact: Vec<f64>,
    exact_tol: Vec<f64>,
    vs_f32: Vec<f64>,
    vs_f32_tol: Vec<f64>,
}

fn run_case(
    kernels: &Kernels,
    ty: GgmlType,
    rows: usize,
    k: usize,
    n_tokens: usize,
    seed: u64,
) -> Case {
    run_kernel(kernels, ty, rows, k, n_tokens, seed, false)
}

/// [`run_case`] through the packed kernel (`packed`, for whole groups of rows) or the tile
/// kernel.
fn run_kernel(
    kernels: &Kernels,
    ty: GgmlType,
    rows: usize,
    k: usize,
    n_tokens: usize,
    seed: u64,
    packed: bool,
) -> Case {
    let mut rng = Rng::new(seed);
    let w = random_weights(&mut rng, ty, rows, k);
    let x = random_activations(&mut rng, n_tokens * k);
    let format = ActFormat::vec_dot_type(ty).unwrap();
    let mut acts = QuantActs::new(k, n_tokens, [(ty, 1)]);
    let view = acts.quantize(kernels.level, format, 1, &x, k);
    let xq = dequantized_acts(&view, format);
    let row_bytes = w.len() / rows;
    let mut got = vec![f32::NAN; rows * n_tokens];
    // SAFETY: the view matches ty's format and k; got holds n_tokens rows of `rows` values.
    unsafe {
        let y = got.as_mut_ptr();
        if packed {
            let bytes = pack::pack(ty, &w, k, rows).unwrap();
            let p = pack::Packed::new(ty, &bytes, k, rows).unwrap();
            kernels.packed(ty).unwrap()(p.groups(0..p.groups), &view, y, rows);
        } else {
            kernels.tile(ty).unwrap()(&w, row_bytes, &view, y, rows);
        }
    }
    let mut case = Case {
        got,
        exact: vec![],
        exact_tol: vec![],
        vs_f32: vec![],
        vs_f32_tol: vec![],
    };
    let mut wf = vec![0.0; k];
    for t in 0..n_tokens {
        for r in 0..rows {
            dequantize(ty, &w[r * row_bytes..(r + 1) * row_bytes], &mut wf).unwrap();
            let (xr, xqr) = (&x[t * k..(t + 1) * k], &xq[t * k..(t + 1) * k]);
            let dot = |a: &[f32]| {
                wf.iter()
                    .zip(a)
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum::<f64>()
            };
            let magnitude: f64 = wf
                .iter()
                .zip(xqr)
                .map(|(&w, &x)| f64::from(w * x).abs())
                .sum();
            // f32 rounding of the per-block scaling and of the accumulation.
            let tol = 1e-5 * magnitude + 1e-6;
            // |w . (x - x_q)| <= sum |w| |x - x_q|.
            let quant_err: f64 = wf
                .iter()
                .zip(xr)
                .zip(xqr)
                .map(|((&w, &x), &q)| f64::from(w).abs() * f64::from(x - q).abs())
                .sum();
            case.exact.push(dot(xqr));
            case.exact_tol.push(tol);
            case.vs_f32.push(dot(xr));
            case.vs_f32_tol.push(quant_err + tol);
        }
    }
    case
}

/// The levels this CPU runs; says which it skips.
fn levels() -> Vec<Kernels> {
    Level::ALL
        .iter()
        .filter_map(|&l| {
            let k = Kernels::for_level(l);
            if k.is_none() {
                eprintln!("skipping the {l:?} kernels: this CPU lacks their instructions");
            }
            k
        })
        .collect()
}

#[test]
fn every_level_matches_the_f32_reference() {
    for kernels in levels() {
        for ty in TYPES {
            let block = ty.block_len();
            let ks: &[usize] = if block == QK_K {
                &[256, 512, 768]
            } else {
                &[32, 64, 96, 576]
            };
            for &k in ks {
                for n_tokens in [1, 2, 3, 4, 5, 7, 9] {
                    let c = run_case(&kernels, ty, 3, k, n_tokens, (k * 31 + n_tokens) as u64);
                    for i in 0..c.got.len() {
                        let got = f64::from(c.got[i]);
                        let what = format!(
                            "{:?} {ty} k={k} tokens={n_tokens} output {i}",
                            kernels.level
                        );
                        assert!(
                            (got - c.exact[i]).abs() <= c.exact_tol[i],
                            "{what}: {got} vs {} (tolerance {})",
                            c.exact[i],
                            c.exact_tol[i]
                        );
                        assert!(
                            (got - c.vs_f32[i]).abs() <= c.vs_f32_tol[i],
                            "{what}: {got} vs f32 {}",
                            c.vs_f32[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn packed_kernels_match_the_reference_and_the_portable_kernels() {
    let portable = Kernels::for_level(Level::Portable).unwrap();
    let mut tested = 0;
    for kernels in levels() {
        for ty in TYPES {
            if kernels.packed(ty).is_none() {
                continue;
            }
            let ks = if ty.block_len() == QK_K {
                [256, 512, 768]
            } else {
                [32, 96, 576]
            };
            for k in ks {
                for n_tokens in [1, 2, 3, 4, 5, 8, 9, 10, 11, 19] {
                    let seed = (k + n_tokens) as u64;
                    // One to three groups: pairs of groups and a group alone.
                    let rows = (1 + n_tokens % 3) * PACK_ROWS;
                    let c = run_kernel(&kernels, ty, rows, k, n_tokens, seed, true);
                    let p = run_case(&portable, ty, rows, k, n_tokens, seed);
                    for i in 0..c.got.len() {
                        let got = f64::from(c.got[i]);
                        let what = format!(
                            "packed {:?} {ty} k={k} tokens={n_tokens} output {i}",
                            kernels.level
                        );
                        let (exact, tol) = (c.exact[i], c.exact_tol[i]);
                        assert!(
                            (got - exact).abs() <= tol,
                            "{what}: {got} vs {exact} ({tol})"
                        );
                        let f32_ref = c.vs_f32[i];
                        assert!(
                            (got - f32_ref).abs() <= c.vs_f32_tol[i],
                            "{what}: vs {f32_ref}"
                        );
                        let other = f64::from(p.got[i]);
                        assert!((got - other).abs() <= 2.0 * tol, "{what}: portable {other}");
                    }
                    tested += 1;
                }
            }
        }
    }
    if tested == 0 {
        eprintln!("no packed kernel tested: this CPU runs none of their levels");
    }
}

#[test]
fn packed_groups_give_the_same_bits_together_and_alone() {
    for kernels in levels() {
        for ty in TYPES {
            let Some(kernel) = kernels.packed(ty) else {
                continue;
            };
            let (k, n_tokens, rows) = (3 * ty.block_len(), 5, 2 * PACK_ROWS);
            let mut rng = Rng::new(9);
            let w = random_weights(&mut rng, ty, rows, k);
            let x = random_activations(&mut rng, n_tokens * k);
            let format = ActFormat::vec_dot_type(ty).unwrap();
            let mut acts = QuantActs::new(k, n_tokens, [(ty, 1)]);
            let view = acts.quantize(kernels.level, format, 1, &x, k);
            let bytes = pack::pack(ty, &w, k, rows).unwrap();
            let p = pack::Packed::new(ty, &bytes, k, rows).unwrap();
            let (mut together, mut alone) =
                (vec![0f32; rows * n_tokens], vec![0f32; rows * n_tokens]);
            // SAFETY: the view matches ty, and the outputs hold n_tokens rows of `rows` values.
            unsafe {
                kernel(p.groups(0..2), &view, together.as_mut_ptr(), rows);
                kernel(p.groups(0..1), &view, alone.as_mut_ptr(), rows);
                kernel(
                    p.groups(1..2),
                    &view,
                    alone.as_mut_ptr().add(PACK_ROWS),
                    rows,
                );
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&together), bits(&alone), "{:?} {ty}", kernels.level);
        }
    }
}

#[test]
fn levels_agree_with_each_other() {
    let portable = Kernels::for_level(Level::Portable).unwrap();
    for kernels in levels() {
        for ty in TYPES {
            let k = 2 * QK_K.max(ty.block_len()) + if ty.block_len() == QK { 3 * QK } else { 0 };
            for n_tokens in [1, 4, 6] {
                let a = run_case(&portable, ty, 5, k, n_tokens, 7);
                let b = run_case(&kernels, ty, 5, k, n_tokens, 7);
                for i in 0..a.got.len() {
                    let (x, y) = (f64::from(a.got[i]), f64::from(b.got[i]));
                    assert!(
                        (x - y).abs() <= 2.0 * a.exact_tol[i],
                        "{:?} {ty} tokens={n_tokens} output {i}: {y} vs portable {x}",
                        kernels.level
                    );
                }
            }
        }
    }
}

#[test]
fn tiles_write_only_their_rows() {
    // A tile of 2 rows inside a 5-wide output leaves the other columns alone.
    for kernels in levels() {
        let mut rng = Rng::new(3);
        let (k, n_tokens, stride) = (64, 5, 5);
        let w = random_weights(&mut rng, GgmlType::Q4_1, 2, k);
        let x = random_activations(&mut rng, n_tokens * k);
        let mut acts = QuantActs::new(k, n_tokens, [(GgmlType::Q4_1, 1)]);
        let view = acts.quantize(kernels.level, ActFormat::Q8_1, 1, &x, k);
        let mut y = vec![f32::NAN; n_tokens * stride];
        // SAFETY: 2 rows, writes at t * 5 + 1 + r for r < 2, t < 5.
        unsafe { (kernels.q4_1)(&w, w.len() / 2, &view, y.as_mut_ptr().add(1), stride) };
        for (i, v) in y.iter().enumerate() {
            assert_eq!(
                v.is_nan(),
                !matches!(i % stride, 1 | 2),
                "{:?} element {i}",
                kernels.level
            );
        }
    }
}

#[test]
fn best_is_the_highest_available_level() {
    let best = Level::ALL.iter().rev().find(|l| l.available()).unwrap();
    assert_eq!(Kernels::best().level, *best);
    assert_eq!(
        Kernels::for_level(Level::Portable).unwrap().level,
        Level::Portable
    );
    for l in Level::ALL {
        assert_eq!(
            Kernels::for_level(l).map(|k| k.level),
            l.available().then_some(l)
        );
    }
}

#[test]
fn quantization_is_the_same_at_every_level() {
    let mut rng = Rng::new(11);
    let mut x = random_activations(&mut rng, 3 * 512);
    // A block scaled by exactly 1, with ties that round away from zero, and an all-zero block.
    x[..8].copy_from_slice(&[127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5]);
    x[8..32].fill(0.25);
    x[32..64].fill(0.0);
    for format in [ActFormat::Q8_0, ActFormat::Q8_1, ActFormat::Q8K] {
        let ty = match format {
            ActFormat::Q8_0 => GgmlType::Q4_0,
            ActFormat::Q8_1 => GgmlType::Q4_1,
            ActFormat::Q8K => GgmlType::Q4_K,
        };
        let mut reference = None;
        for kernels in levels() {
            let mut acts = QuantActs::new(512, 3, [(ty, 1)]);
            let view = acts.quantize(kernels.level, format, 1, &x, 512);
            // SAFETY: the view covers 3 rows.
            let bytes =
                unsafe { std::slice::from_raw_parts(view.blocks, 3 * view.row_bytes) }.to_vec();
            let mut expected = vec![0u8; bytes.len()];
            let act_ty = match format {
                ActFormat::Q8_0 => GgmlType::Q8_0,
                ActFormat::Q8_1 => GgmlType::Q8_1,
                ActFormat::Q8K => GgmlType::Q8_K,
            };
            crate::quant::quantize(act_ty, &x, &mut expected).unwrap();
            assert_eq!(bytes, expected, "{:?} {format:?}", kernels.level);
            assert_eq!(*reference.get_or_insert(bytes.clone()), bytes);
        }
    }
}

#[test]
fn two_terms_hold_the_activations_to_a_residual_step() {
    // Each value is within a fraction of a step of the residual's step (the residual is at most
    // about half a step of the first term, so about 1/127 of its block's largest value over 254),
    // at every level and in every format; one term alone is not.
    for kernels in levels() {
        for (format, ty) in [
            (ActFormat::Q8_0, GgmlType::Q5_0),
            (ActFormat::Q8_1, GgmlType::Q4_1),
            (ActFormat::Q8K, GgmlType::Q6_K),
        ] {
            let (k, n_tokens) = (512, 3);
            let mut rng = Rng::new(11);
            let mut x = random_activations(&mut rng, n_tokens * k);
            x[5] = 40.0; // an outlier, as real activations have
            let mut acts = QuantActs::new(k, n_tokens, [(ty, 2)]);
            let view = acts.quantize(kernels.level, format, 2, &x, k);
            assert_eq!(view.n_tokens, 2 * n_tokens);
            let xq = dequantized_acts(&view, format);
            let block = format.block_len();
            let (mut worst_one, mut worst_two) = (0f32, 0f32);
            for t in 0..n_tokens {
                for (b, chunk) in x[t * k..(t + 1) * k].chunks_exact(block).enumerate() {
                    let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (i, &v) in chunk.iter().enumerate() {
                        let at = b * block + i;
                        let one = xq[t * k + at];
                        let two = one + xq[(n_tokens + t) * k + at];
                        worst_one = worst_one.max((v - one).abs() / amax);
                        worst_two = worst_two.max((v - two).abs() / amax);
                    }
                }
            }
            let what = format!("{:?} {format:?}", kernels.level);
            assert!(worst_two <= 0.4 / (127.0 * 127.0), "{what}: {worst_two}");
            assert!(
                worst_one > 50.0 * worst_two,
                "{what}: {worst_one} vs {worst_two}"
            );
        }
    }
}
