//! Micro-benchmarks of the CPU matrix-product kernels at the test models' sizes.
//!
//! `cargo bench -p llamart --bench kernels [-- FILTER]`. Shapes are `KxN` as GGUF writes them
//! (K inputs, N output rows): for the legacy types SmolLM2-135M's 576x1536 (ffn gate/up),
//! 1536x576 (ffn down) and 576x49152 (the tied Q8_0 LM head); for the K-quants the FFN down
//! products of Qwen2.5-0.5B (4864x896) and Gemma-3-270M (2048x640). Those fit in the caches,
//! which a decoding model's weights do not: Gemma-3-270M's LM head (640x262144, 178 MB as
//! Q8_0) and a 4864x17920 K-quant matrix measure the kernels streaming from memory, at few
//! tokens only. Decode products (T1; T2: one token's two activation terms; T8) report weight
//! bytes per second, to compare with the memory bandwidth; the T=64 batches (prefill) report
//! multiply-adds per second.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llamart::cpu::dot::{pack, ActFormat, Kernels, Level, QuantActs};
use llamart::cpu::MatMul;
use llamart::plan::Activations;
use llamart::GgmlType;

const SHAPES: [(usize, usize); 4] = [(576, 1536), (1536, 576), (576, 49152), (640, 262144)];
const K_SHAPES: [(usize, usize); 3] = [(4864, 896), (2048, 640), (4864, 17920)];

/// Token counts to measure a `k x n` product at: no prefill batch for the memory-sized ones.
fn token_counts(k: usize, n: usize, counts: &[usize]) -> Vec<usize> {
    let streamed = k * n > 64 << 20;
    counts
        .iter()
        .copied()
        .filter(|&t| !streamed || t <= 8)
        .collect()
}

fn shapes(ty: GgmlType) -> &'static [(usize, usize)] {
    if ty.block_len() == 256 {
        &K_SHAPES
    } else {
        &SHAPES
    }
}

/// Deterministic bytes (xorshift) with every block's f16 scale fields set to small values, so the
/// products stay finite whatever the quants are.
fn weights(ty: GgmlType, k: usize, n: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut w: Vec<u8> = (0..ty.bytes_for((k * n) as u64).unwrap())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let scale_fields: &[usize] = match ty {
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    for block in w.chunks_exact_mut(ty.block_bytes()) {
        for &at in scale_fields {
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    w
}

fn activations(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn levels() -> Vec<Kernels> {
    Level::ALL
        .iter()
        .filter_map(|&l| Kernels::for_level(l))
        .collect()
}

/// One thread, one kernel call over all rows: the kernels' own speed.
fn tiles(c: &mut Criterion) {
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let format = ActFormat::vec_dot_type(ty).unwrap();
        for &(k, n) in shapes(ty) {
            let w = weights(ty, k, n);
            let row_bytes = w.len() / n;
            for n_tokens in token_counts(k, n, &[1, 2, 8, 64]) {
                let mut group = c.benchmark_group(format!("tile/{ty}/{k}x{n}/T{n_tokens}"));
                group.sample_size(if n_tokens * n > 1 << 20 { 10 } else { 50 });
                group.throughput(if n_tokens <= 8 {
                    Throughput::Bytes(w.len() as u64)
                } else {
                    Throughput::Elements((k * n * n_tokens) as u64)
                });
                let x = activations(k * n_tokens);
                let mut y = vec![0.0f32; n * n_tokens];
                for kernels in levels() {
                    let mut acts = QuantActs::new(k, n_tokens, [(ty, 1)]);
                    let view = acts.quantize(kernels.level, format, 1, &x, k);
                    let tile = kernels.tile(ty).unwrap();
                    group.bench_function(
                        BenchmarkId::from_parameter(format!("{:?}", kernels.level)),
                        |b| {
                            // SAFETY: the view holds n_tokens rows of k values in ty's format,
                            // and y n_tokens rows of n outputs.
                            b.iter(|| unsafe {
                                tile(black_box(&w), row_bytes, &view, y.as_mut_ptr(), n)
                            })
                        },
                    );
                    if let Some(kernel) = kernels.packed(ty) {
                        let bytes = pack::pack(ty, &w, k, n).unwrap();
                        let p = pack::Packed::new(ty, &bytes, k, n).unwrap();
                        let id = format!("{:?}-packed", kernels.level);
                        group.bench_function(BenchmarkId::from_parameter(id), |b| {
                            // SAFETY: as above, with weights packed for ty.
                            b.iter(|| unsafe {
                                let packed = black_box(p.groups(0..p.groups));
                                kernel(packed, &view, y.as_mut_ptr(), n)
                            })
                        });
                    }
                }
                group.finish();
            }
        }
    }
}

/// Quantizing the activations of one product (the part every product pays before its kernels).
fn quantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("quantize");
    for (format, ty) in [
        (ActFormat::Q8_1, GgmlType::Q4_1),
        (ActFormat::Q8_0, GgmlType::Q8_0),
    ] {
        for n_tokens in [1, 64] {
            let x = activations(576 * n_tokens);
            group.throughput(Throughput::Elements(x.len() as u64));
            let mut acts = QuantActs::new(576, n_tokens, [(ty, 1)]);
            let level = Kernels::best().level;
            group.bench_function(format!("{format:?}/576/T{n_tokens}"), |b| {
                b.iter(|| acts.quantize(level, format, 1, black_box(&x), 576).nb)
            });
        }
    }
    group.finish();
}

/// The whole threaded product as the interpreter runs it, at 1 and 2 threads: adds the
/// quantization and the cost of handing work to the threads.
fn products(c: &mut Criterion) {
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        for &(k, n) in shapes(ty) {
            // As a plan stores them.
            let w = pack::pack(ty, &weights(ty, k, n), k, n).unwrap();
            for n_tokens in token_counts(k, n, &[1, 64]) {
                let mut group = c.benchmark_group(format!("matmul/{ty}/{k}x{n}/T{n_tokens}"));
                group.sample_size(if n_tokens * n > 1 << 20 { 10 } else { 50 });
                group.throughput(if n_tokens == 1 {
                    Throughput::Bytes(w.len() as u64)
                } else {
                    Throughput::Elements((k * n * n_tokens) as u64)
                });
                let x = activations(k * n_tokens);
                let mut y = vec![0.0f32; n * n_tokens];
                for threads in [1, 2] {
                    let mut mm = MatMul::new(threads, k, n_tokens, &[ty], Activations::Q8).unwrap();
                    mm.prepare(0, ty, &w, k, n, true);
                    group.bench_function(BenchmarkId::new("threads", threads), |b| {
                        b.iter(|| mm.run(0, ty, black_box(&w), &x, &mut y, k, n))
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, tiles, quantize, products);
criterion_main!(benches);
