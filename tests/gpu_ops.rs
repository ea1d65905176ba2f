//! Op conformance, in the spirit of llama.cpp's test-backend-ops: every kernel the compiler emits
//! for the GPU (each op, each weight type, shapes that are not multiples of the block or workgroup
//! size) runs on wgpu and on the CPU interpreter from the same plan, and the outputs must agree to
//! a normalized mean squared error of 1e-6.
//!
//! Each case is a small hand-built plan: F32 embedding tables turn token ids into the op's inputs,
//! then the op under test writes the plan's output rows.

use llama_e2e::gpu_available;
use llamart::cpu::Session;
use llamart::gpu::GpuSession;
use llamart::plan::*;
use llamart::GgmlType;

struct Rng(u64);

impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn byte(&mut self) -> u8 {
        (self.f32().to_bits() >> 7) as u8
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Random weight bytes of type `ty` with `rows` rows of `k` values and sane scales.
fn random_weight(rng: &mut Rng, ty: GgmlType, k: u64, rows: u64) -> Vec<u8> {
    let n = (k * rows) as usize;
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        GgmlType::F16 => (0..n).flat_map(|_| f16_bytes(rng.f32())).collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| ((rng.f32().to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        _ => {
            let blocks = n / ty.block_len();
            let mut out = Vec::with_capacity(blocks * ty.block_bytes());
            for _ in 0..blocks {
                let mut b: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.byte()).collect();
                let scale = |b: &mut Vec<u8>, at: usize, v: f32| {
                    b[at..at + 2].copy_from_slice(&f16_bytes(v))
                };
                match ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
                        scale(&mut b, 0, 0.05 * rng.f32())
                    }
                    GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                        scale(&mut b, 0, 0.05 * rng.f32());
                        scale(&mut b, 2, 0.05 * rng.f32());
                    }
                    GgmlType::Q6_K => scale(&mut b, 208, 0.01 * rng.f32()),
                    GgmlType::Q2_K => {
                        scale(&mut b, 80, 0.05 * rng.f32());
                        scale(&mut b, 82, 0.05 * rng.f32());
                    }
                    GgmlType::Q3_K => scale(&mut b, 108, 0.01 * rng.f32()),
                    other => unreachable!("no generator for {other}"),
                }
                out.extend(b);
            }
            out
        }
    }
}

/// Builds plans of the form "embed the ids through F32 tables, then one op".
struct Builder {
    rng: Rng,
    weights: Vec<WeightInfo>,
    data: Vec<Vec<u8>>,
    steps: Vec<Step>,
    arena: u64,
    max_batch: u32,
    ctx: u32,
}

impl Builder {
    fn new(seed: u64) -> Self {
        let mut b = Builder {
            rng: Rng(seed),
            weights: vec![],
            data: vec![],
            steps: vec![],
            arena: 0,
            max_batch: 8,
            ctx: 16,
        };
        b.alloc(1); // token ids
        b
    }

    /// A builder for plans of `ctx` positions that take `max_batch` tokens a step.
    fn with_limits(seed: u64, ctx: u32, max_batch: u32) -> Self {
        let mut b = Builder {
            max_batch,
            ctx,
            ..Builder::new(seed)
        };
        b.arena = 0;
        b.alloc(1);
        b
    }

    fn alloc(&mut self, per_token_values: u64) -> Buf {
        let row_bytes = (per_token_values * 4).div_ceil(32) * 32;
        let buf = Buf::Arena {
            offset: self.arena,
            row_bytes,
        };
        self.arena += row_bytes * u64::from(self.max_batch);
        buf
    }

    fn weight(&mut self, ty: GgmlType, dims: &[u64]) -> Buf {
        let bytes = random_weight(&mut self.rng, ty, dims[0], dims[1..].iter().product());
        let offset = self
            .weights
            .iter()
            .map(|w| w.offset + w.bytes.div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN)
            .max()
            .unwrap_or(0);
        self.weights.push(WeightInfo {
            name: format!("w{}", self.weights.len()),
            ty,
            dims: dims.to_vec(),
            offset,
            bytes: bytes.len() as u64,
            packed: false,
        });
        self.data.push(bytes);
        Buf::Weight(self.weights.len() as u32 - 1)
    }

    /// A plan that only embeds the ids through a random table of type `ty` and `k` values a row.
    fn embedding(seed: u64, ty: GgmlType, k: u32) -> (Builder, Buf) {
        let mut b = Builder::new(seed);
        let table = b.weight(ty, &[k.into(), VOCAB.into()]);
        let out = b.alloc(k.into());
        let ids = Buf::Arena {
            offset: 0,
            row_bytes: 32,
        };
        b.steps.push(Step {
            formed: None,
            kernel: Kernel::Embed { n: k, scale: 1.0 },
            inputs: vec![table, ids],
            output: out,
        });
        (b, out)
    }

    /// An activation input of `n` values a token: a row of a random F32 table picked by token id.
    fn input(&mut self, n: u32) -> Buf {
        let table = self.weight(GgmlType::F32, &[n.into(), VOCAB.into()]);
        let out = self.alloc(n.into());
        let ids = Buf::Arena {
            offset: 0,
            row_bytes: 32,
        };
        self.steps.push(Step {
            formed: None,
            kernel: Kernel::Embed { n, scale: 1.0 },
            inputs: vec![table, ids],
            output: out,
        });
        out
    }

    fn op(&mut self, kernel: Kernel, inputs: Vec<Buf>, out_values: u32) -> Buf {
        let out = self.alloc(out_values.into());
        self.steps.push(Step {
            formed: None,
            kernel,
            inputs,
            output: out,
        });
        out
    }

    /// Writes the plan with `output` (of `n_out` values a token) as its "logits".
    fn finish(self, output: Buf, n_out: u32, kv: KvLayout) -> std::path::PathBuf {
        self.finish_with_max_binding(output, n_out, kv, llamac::wgsl::MAX_BINDING_BYTES)
    }

    fn finish_with_max_binding(
        self,
        output: Buf,
        n_out: u32,
        kv: KvLayout,
        max_binding: u64,
    ) -> std::path::PathBuf {
        let mut header = self.header(output, n_out, kv);
        header.gpu = llamac::wgsl::gpu_section_with_max_binding(&header, max_binding).unwrap();
        let path = llama_e2e::scratch_dir().join(format!(
            "op-{}.plan",
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        PlanWriter::write(&path, &header, b"null", self.data.iter().map(Vec::as_slice)).unwrap();
        path
    }

    /// The plan's header, without its GPU section.
    fn header(&self, output: Buf, n_out: u32, kv: KvLayout) -> PlanHeader {
        let ctx = self.ctx;
        PlanHeader {
            format_version: FORMAT_VERSION,
            compiler_version: "test".into(),
            model: ModelInfo {
                architecture: "test".into(),
                name: "op".into(),
                n_vocab: n_out,
                n_embd: 0,
                n_layer: 0,
                n_ctx_train: ctx,
                chat_template: None,
            },
            // The single-sequence layout: the pool is the context, in pages of a power of two.
            limits: Limits {
                ctx,
                max_batch: self.max_batch,
                kv_tokens: ctx,
                page_tokens: ctx & ctx.wrapping_neg(),
                max_seqs: 1,
            },
            activations: Activations::F32,
            arena: ArenaLayout { bytes: self.arena },
            kv,
            token_ids: Buf::Arena {
                offset: 0,
                row_bytes: 32,
            },
            logits: output,
            steps: self.steps.clone(),
            weights: self.weights.clone(),
            gpu: Default::default(),
        }
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Rows of every embedding table: more than any output row is long, since the output row length
/// is the test plan's "vocabulary" that token ids are checked against.
const VOCAB: u32 = 1024;

fn nmse(gpu: &[f32], cpu: &[f32]) -> f64 {
    let err: f64 = gpu
        .iter()
        .zip(cpu)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let norm: f64 = cpu.iter().map(|b| f64::from(*b).powi(2)).sum();
    err / norm.max(1e-30)
}

/// The normalized mean squared error every kernel must meet: the test plans keep activations in
/// f32, so both backends compute the same function and differ only in the order of their sums.
const TOLERANCE: f64 = 1e-6;

/// Runs the plan on both backends: a prefill of 5 tokens, then 2 single-token steps.
fn compare(label: &str, path: &std::path::Path) {
    compare_steps(label, path, &[&[1, 5, 2, 6, 0], &[3], &[4]]);
}

/// Runs the plan on both backends, one step per slice of token ids.
fn compare_steps(label: &str, path: &std::path::Path, steps: &[&[u32]]) {
    let plan = LoadedPlan::open(path).unwrap();
    let mut cpu = Session::new(&plan, 2).unwrap();
    let mut last = Session::new(&plan, 2).unwrap();
    let mut gpu = GpuSession::new(&plan).unwrap();
    let mut gpu_last = GpuSession::new(&plan).unwrap();
    let n_vocab = plan.header.model.n_vocab;
    for (i, tokens) in steps.iter().enumerate() {
        let tokens: Vec<u32> = tokens.iter().map(|t| t % n_vocab).collect();
        let c = cpu.eval(&tokens).unwrap().to_vec();
        let row = c.len() / tokens.len();
        assert_eq!(
            last.eval_last(&tokens).unwrap(),
            &c[c.len() - row..],
            "{label}: the CPU's last-row path differs from its full evaluation"
        );
        let g = gpu.eval(&tokens).unwrap();
        // The paths that want fewer logits: the logits step computes only the last row (it must
        // equal the full evaluation's), or, for the second step, nothing.
        if i == 1 {
            gpu_last.prefill(&tokens).unwrap();
        } else {
            let last = gpu_last.eval_last(&tokens).unwrap();
            assert!(
                last == &g[g.len() - row..],
                "{label}: the GPU's last-row path differs from its full evaluation"
            );
        }
        let e = nmse(g, &c);
        if std::env::var_os("SHOW_NMSE").is_some() {
            eprintln!("{label}: NMSE {e:e}");
        }
        assert!(
            e <= TOLERANCE,
            "{label}: NMSE {e:e} after {} tokens",
            cpu.n_past()
        );
        assert!(
            c.iter().any(|v| *v != 0.0),
            "{label}: the CPU output is all zeros"
        );
    }
}

const QUANT_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

#[test]
fn matmul_and_embed_for_every_weight_type_and_odd_shapes() {
    if !gpu_available() {
        return;
    }
    for ty in QUANT_TYPES {
        let block = ty.block_len() as u32;
        for (k, n) in [
            (block, 3),
            (2 * block.max(32), 67),
            (3 * block.max(64), 130),
        ] {
            let mut b = Builder::new(u64::from(k * n) + ty.id() as u64);
            let x = b.input(k);
            let w = b.weight(ty, &[k.into(), n.into()]);
            let y = b.op(Kernel::MatMul { k, n }, vec![x, w], n);
            compare(
                &format!("matmul {ty} k={k} n={n}"),
                &b.finish(y, n, no_kv()),
            );

            let (b, out) = Builder::embedding(7 + u64::from(k), ty, k);
            compare(&format!("embed {ty} n={k}"), &b.finish(out, k, no_kv()));
        }
    }
}

#[test]
fn elementwise_norm_and_rope_kernels() {
    if !gpu_available() {
        return;
    }
    let none = no_kv;
    for n in [1u32, 37, 64, 200] {
        for (name, kernel) in [
            (
                "add",
                Kernel::Add {
                    n,
                    broadcast: false,
                },
            ),
            (
                "mul",
                Kernel::Mul {
                    n,
                    broadcast: false,
                },
            ),
        ] {
            let mut b = Builder::new(u64::from(n));
            let (x, y) = (b.input(n), b.input(n));
            let out = b.op(kernel, vec![x, y], n);
            compare(&format!("{name} n={n}"), &b.finish(out, n, none()));
        }
        for (name, kernel) in [
            ("add broadcast", Kernel::Add { n, broadcast: true }),
            ("mul broadcast", Kernel::Mul { n, broadcast: true }),
        ] {
            let mut b = Builder::new(3 + u64::from(n));
            let x = b.input(n);
            let w = b.weight(GgmlType::F32, &[n.into()]);
            let out = b.op(kernel, vec![x, w], n);
            compare(&format!("{name} n={n}"), &b.finish(out, n, none()));
        }
        for (name, kernel) in [
            (
                "silu",
                Kernel::Unary {
                    n,
                    op: UnaryOp::Silu,
                },
            ),
            (
                "gelu",
                Kernel::Unary {
                    n,
                    op: UnaryOp::GeluTanh,
                },
            ),
            ("scale", Kernel::Scale { n, factor: 24.5 }),
        ] {
            let mut b = Builder::new(5 + u64::from(n));
            let x = b.input(n);
            let out = b.op(kernel, vec![x], n);
            compare(&format!("{name} n={n}"), &b.finish(out, n, none()));
        }
        for groups in [1u32, 3] {
            let mut b = Builder::new(9 + u64::from(n));
            let x = b.input(n * groups);
            let w = b.weight(GgmlType::F32, &[n.into()]);
            let out = b.op(
                Kernel::RmsNorm {
                    n,
                    groups,
                    eps: 1e-6,
                },
                vec![x, w],
                n * groups,
            );
            compare(
                &format!("rms_norm n={n} groups={groups}"),
                &b.finish(out, n * groups, none()),
            );
        }
    }
    for (n_head, head_dim, n_rot, neox) in [
        (3u32, 64u32, 64u32, false),
        (2, 256, 256, true),
        (4, 32, 16, true),
        (1, 10, 6, false),
    ] {
        let mut b = Builder::new(u64::from(n_head * head_dim));
        let x = b.input(n_head * head_dim);
        let kernel = Kernel::Rope {
            n_head,
            head_dim,
            n_rot,
            base: 10000.0,
            neox,
        };
        let out = b.op(kernel, vec![x], n_head * head_dim);
        compare(
            &format!("rope {n_head}x{head_dim} rot {n_rot} neox {neox}"),
            &b.finish(out, n_head * head_dim, none()),
        );
    }
}

#[test]
fn attention_with_grouped_heads_windows_and_a_growing_cache() {
    if !gpu_available() {
        return;
    }
    for (n_head, n_kv_head, head_dim, window) in [
        (4u32, 2u32, 8u32, None),
        (9, 3, 64, None),
        (4, 1, 256, Some(3)),
        (2, 2, 20, Some(1)),
        (4, 2, 64, Some(2)),
    ] {
        for ty in [KvType::F16, KvType::F32, KvType::Q8_0] {
            if ty.supports(head_dim).is_err() {
                continue;
            }
            let mut b = Builder::new(u64::from(n_head * head_dim));
            let q = b.input(n_head * head_dim);
            let k = b.input(n_kv_head * head_dim);
            let v = b.input(n_kv_head * head_dim);
            let kv = one_layer_kv(16, n_kv_head, head_dim, ty);
            let kernel = attention(n_head, n_kv_head, head_dim, window, true);
            let out = b.op(kernel, vec![q, k, v], n_head * head_dim);
            compare(
                &format!("attention {n_head}/{n_kv_head}x{head_dim} window {window:?} {ty} cache"),
                &b.finish(out, n_head * head_dim, kv),
            );
        }
    }
}

/// The GPU attention takes keys in blocks of 64 and tokens in tiles of 8, with a path of its own
/// for a single token: a 1086-token run of prefill chunks (whole and partial tiles) and single
/// tokens crosses both, with windows that start inside a tile and inside a block, and reaches
/// contexts where the kernel's loops would exceed lavapipe's limit of 65535 loop iterations per
/// invocation if they took a dimension or a token at a time (the first version did, and its output
/// went wrong past about 830 positions). The per-head projection goes through the same path.
#[test]
fn attention_across_key_blocks_and_token_tiles() {
    if !gpu_available() {
        return;
    }
    let ids: Vec<u32> = (0..1086u32).map(|i| (i * 37 + 11) % VOCAB).collect();
    let mut steps: Vec<&[u32]> = Vec::new();
    let mut at = 0;
    for len in [11, 117, 128, 128, 128, 128, 1, 128, 128, 128, 60, 1] {
        steps.push(&ids[at..at + len]);
        at += len;
    }
    let ctx = 2048;
    for (n_head, n_kv_head, head_dim, window, project, ty) in [
        (4u32, 1u32, 256u32, None, false, KvType::F16),
        (4, 1, 256, Some(512), false, KvType::F16),
        (9, 3, 64, None, false, KvType::Q8_0),
        (4, 1, 256, Some(70), false, KvType::F32),
        (2, 2, 20, Some(5), false, KvType::F16),
        (9, 3, 64, Some(100), true, KvType::F16),
    ] {
        let mut b = Builder::with_limits(u64::from(head_dim) + 7, ctx, 128);
        let q = b.input(n_head * head_dim);
        let k = b.input(n_kv_head * head_dim);
        let v = b.input(n_kv_head * head_dim);
        let kv = one_layer_kv(ctx, n_kv_head, head_dim, ty);
        let kernel = |append| attention(n_head, n_kv_head, head_dim, window, append);
        let width = n_head * head_dim;
        let (out, n_out) = if project {
            // The first attention stores the keys and values the projected one reads; the parts
            // are summed into a product's input, as fuse_attention_output arranges.
            b.op(kernel(true), vec![q, k, v], width);
            let n = 48;
            let w_o = b.weight(GgmlType::Q8_0, &[width.into(), n.into()]);
            let project = Kernel::AttentionProject {
                layer: 0,
                n_head,
                n_kv_head,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
                n,
            };
            let parts = b.op(project, vec![q, w_o], n_head * n);
            let x = b.input(n);
            let w = b.weight(GgmlType::F32, &[n.into(), 24]);
            let sum = Kernel::FusedMatMul {
                weights: 1,
                post_norm: None,
                k: n,
                n: 24,
                norm: None,
                epilogue: Epilogue::Store,
                partials: Some(Partials {
                    into: PartialsInto::Input,
                    count: n_head,
                }),
            };
            (b.op(sum, vec![x, w, parts], 24), 24)
        } else {
            (b.op(kernel(true), vec![q, k, v], width), width)
        };
        compare_steps(
            &format!(
                "attention {n_head}/{n_kv_head}x{head_dim} window {window:?} project {project} {ty} cache"
            ),
            &b.finish(out, n_out, kv),
            &steps,
        );
    }
}

/// The logits step (a product, fused or not, whole or split across bindings) computes only the
/// rows the host wants: with prompts longer than a tile, the last row comes from a later tile, and
/// a prefill dispatches nothing of that step.
#[test]
fn the_logits_step_computes_only_the_wanted_rows() {
    if !gpu_available() {
        return;
    }
    let ids: Vec<u32> = (0..35u32).map(|i| (i * 13 + 5) % VOCAB).collect();
    let steps = [&ids[..19], &ids[19..22], &ids[22..]];
    let (k, n) = (64u32, 300u32);
    for (fused, max_binding) in [
        (false, llamac::wgsl::MAX_BINDING_BYTES),
        (true, llamac::wgsl::MAX_BINDING_BYTES),
        (true, 64 * 68 * 4),
    ] {
        let mut b = Builder::with_limits(u64::from(n) + u64::from(fused), 48, 24);
        let x = b.input(k);
        let w = b.weight(GgmlType::Q8_0, &[k.into(), n.into()]);
        let head = if fused {
            let norm = b.weight(GgmlType::F32, &[k.into()]);
            let kernel = Kernel::FusedMatMul {
                weights: 1,
                post_norm: None,
                k,
                n,
                norm: Some(1e-5),
                epilogue: Epilogue::Store,
                partials: None,
            };
            b.op(kernel, vec![x, w, norm], n)
        } else {
            b.op(Kernel::MatMul { k, n }, vec![x, w], n)
        };
        let path = b.finish_with_max_binding(head, n, no_kv(), max_binding);
        let plan = LoadedPlan::open(&path).unwrap();
        let gpu = &plan.header.gpu;
        let head: Vec<&GpuDispatch> = gpu.dispatches.iter().filter(|d| d.logits).collect();
        // A fused head reads every binding its weight needs in one dispatch.
        let weight_bindings = head
            .iter()
            .flat_map(|d| &d.bindings)
            .filter(|b| matches!(b, GpuBinding::Weight { index, .. } if Buf::Weight(*index) == w))
            .count();
        let expected = if max_binding < u64::from(n) * 68 {
            2
        } else {
            1
        };
        assert_eq!(
            weight_bindings, expected,
            "fused {fused}: the head's bindings"
        );
        assert_eq!(head.len(), 1, "fused {fused}: the head's dispatches");
        let label = format!("fused {fused}, head in {weight_bindings} bindings");
        compare_steps(&label, &path, &steps);

        let mut session = GpuSession::new(&plan).unwrap();
        session.prefill(steps[0]).unwrap();
        let all = gpu.dispatches.len() as u32;
        assert_eq!(
            session.last_step.dispatches,
            all - head.len() as u32,
            "{label}"
        );
        assert_eq!(session.last_step.bytes_read_back, 0, "{label}");
        session.eval_last(steps[1]).unwrap();
        assert_eq!(session.last_step.dispatches, all, "{label}");
        assert_eq!(
            session.last_step.bytes_read_back,
            u64::from(n) * 4,
            "{label}"
        );

        // A plan that marks another step's dispatch as the logits step's is refused.
        let mut header = plan.header.clone();
        header.gpu.dispatches[0].logits = true;
        let bad = path.with_extension("marked.plan");
        let weights = (0..header.weights.len() as u32).map(|i| plan.weight(i));
        PlanWriter::write(&bad, &header, plan.tokenizer_json(), weights).unwrap();
        match GpuSession::new(&LoadedPlan::open(&bad).unwrap()) {
            Ok(_) => panic!("{label}: a wrongly marked dispatch was accepted"),
            Err(e) => assert!(
                e.to_string()
                    .contains("step 0 is marked as computing only the logits"),
                "{label}: {e}"
            ),
        }
    }
}

/// The attention kernel reads head dimensions four at a time: another head size is refused when
/// the plan is compiled, by name. (No GPU needed.)
#[test]
fn attention_heads_of_odd_size_are_refused_at_compile_time() {
    let mut b = Builder::new(1);
    let q = b.input(2 * 6);
    let k = b.input(6);
    let v = b.input(6);
    let kernel = attention(2, 1, 6, None, true);
    let y = b.op(kernel, vec![q, k, v], 2 * 6);
    let header = b.header(y, 2 * 6, one_layer_kv(16, 1, 6, KvType::F16));
    let err = llamac::wgsl::gpu_section(&header).unwrap_err().to_string();
    assert!(err.contains("6 is not a multiple of 4"), "{err}");
}

/// Layer 0's attention, scaled by 1 / sqrt(head_dim); with `append`, it stores its k and v
/// operands in the cache first.
fn attention(
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    window: Option<u32>,
    append: bool,
) -> Kernel {
    Kernel::Attention {
        layer: 0,
        n_head,
        n_kv_head,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
        window,
        append,
    }
}

/// A KV cache of one layer and `ctx` positions stored as `ty`.
fn one_layer_kv(ctx: u32, n_kv_head: u32, head_dim: u32, ty: KvType) -> KvLayout {
    let row = ty.row_bytes(head_dim as usize) as u64;
    let region = (u64::from(ctx * n_kv_head) * row).div_ceil(256) * 256;
    KvLayout {
        bytes: 2 * region,
        ty,
        layers: vec![KvLayer {
            k_offset: 0,
            v_offset: region,
            n_kv_head,
            head_dim,
        }],
    }
}

fn no_kv() -> KvLayout {
    KvLayout {
        bytes: 0,
        ty: KvType::F16,
        layers: vec![],
    }
}

/// The fused product archetype: every epilogue, with and without the RMSNorm prologue, over the
/// weight types the models use.
#[test]
fn fused_products_with_every_prologue_and_epilogue() {
    if !gpu_available() {
        return;
    }
    for ty in [
        GgmlType::F32,
        GgmlType::Q4_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let k = 2 * ty.block_len().max(64) as u32;
        for norm in [None, Some(1e-5f32)] {
            let label = |what: &str| format!("fused {what} {ty} k={k} norm={norm:?}");
            let inputs = |b: &mut Builder, x: Buf, w: Buf| {
                let mut inputs = vec![x, w];
                if norm.is_some() {
                    inputs.push(b.weight(GgmlType::F32, &[k.into()]));
                }
                inputs
            };
            for n in [3u32, 130] {
                let mut b = Builder::new(u64::from(k + n));
                let x = b.input(k);
                let w = b.weight(ty, &[k.into(), n.into()]);
                let ins = inputs(&mut b, x, w);
                let store = Kernel::FusedMatMul {
                    weights: 1,
                    post_norm: None,
                    k,
                    n,
                    norm,
                    epilogue: Epilogue::Store,
                    partials: None,
                };
                let y = b.op(store, ins, n);
                compare(&label(&format!("store n={n}")), &b.finish(y, n, no_kv()));

                let mut b = Builder::new(u64::from(k + n) + 1);
                let x = b.input(k);
                let r = b.input(n);
                let w = b.weight(ty, &[k.into(), n.into()]);
                let mut ins = inputs(&mut b, x, w);
                ins.push(r);
                let add = Kernel::FusedMatMul {
                    weights: 1,
                    post_norm: None,
                    k,
                    n,
                    norm,
                    epilogue: Epilogue::Add,
                    partials: None,
                };
                let y = b.op(add, ins, n);
                compare(&label(&format!("add n={n}")), &b.finish(y, n, no_kv()));
            }
            for op in [UnaryOp::Silu, UnaryOp::GeluTanh] {
                let n = 2 * 67;
                let mut b = Builder::new(u64::from(k) + 2);
                let x = b.input(k);
                let w = b.weight(ty, &[k.into(), n.into()]);
                let ins = inputs(&mut b, x, w);
                let glu = Kernel::FusedMatMul {
                    weights: 1,
                    post_norm: None,
                    k,
                    n,
                    norm,
                    epilogue: Epilogue::Glu(op),
                    partials: None,
                };
                let y = b.op(glu, ins, n / 2);
                compare(&label(&format!("glu {op:?}")), &b.finish(y, n / 2, no_kv()));
            }
            for (n_head, n_kv_head, head_dim, n_rot, neox, bias, kv_type) in [
                (4u32, 2u32, 16u32, 16u32, false, false, KvType::F16),
                (3, 1, 32, 16, true, true, KvType::F16),
                (2, 1, 16, 8, true, false, KvType::F32),
            ] {
                let n = (n_head + 2 * n_kv_head) * head_dim;
                let mut b = Builder::new(u64::from(k + n));
                let x = b.input(k);
                let w = b.weight(ty, &[k.into(), n.into()]);
                let mut ins = inputs(&mut b, x, w);
                if bias {
                    ins.push(b.weight(GgmlType::F32, &[n.into()]));
                }
                let kv = one_layer_kv(16, n_kv_head, head_dim, kv_type);
                let qkv = Kernel::FusedMatMul {
                    weights: 1,
                    post_norm: None,
                    k,
                    n,
                    norm,
                    epilogue: Epilogue::RopeKv {
                        qk_norm: None,
                        layer: 0,
                        n_head,
                        n_kv_head,
                        head_dim,
                        n_rot,
                        base: 10000.0,
                        neox,
                        bias,
                    },
                    partials: None,
                };
                let q = b.op(qkv.clone(), ins, n_head * head_dim);
                // The attention reads the keys and values the product stored, so its output checks
                // the cache as well as q.
                let attention = Kernel::Attention {
                    layer: 0,
                    n_head,
                    n_kv_head,
                    head_dim,
                    scale: 0.25,
                    window: None,
                    append: false,
                };
                let y = b.op(attention, vec![q], n_head * head_dim);
                compare(
                    &label(&format!(
                        "rope_kv {n_head}/{n_kv_head}x{head_dim} rot {n_rot} neox {neox} bias {bias} {kv_type} cache"
                    )),
                    &b.finish(y, n_head * head_dim, kv.clone()),
                );

                // The same attention projected per head, and the parts added to a product's
                // input (through the norm, when there is one) and to another's residual.
                let mut b = Builder::new(u64::from(k + n) + 3);
                let x = b.input(k);
                let w = b.weight(ty, &[k.into(), n.into()]);
                let mut ins = inputs(&mut b, x, w);
                if bias {
                    ins.push(b.weight(GgmlType::F32, &[n.into()]));
                }
                let q = b.op(qkv, ins, n_head * head_dim);
                // Rows of W_o are n_head * head_dim long, shorter than a K-quant block.
                let fits = |len: u32| (len as usize).is_multiple_of(ty.block_len());
                let ty_o = if fits(n_head * head_dim) {
                    ty
                } else {
                    GgmlType::F32
                };
                let w_o = b.weight(ty_o, &[(n_head * head_dim).into(), k.into()]);
                let project = Kernel::AttentionProject {
                    layer: 0,
                    n_head,
                    n_kv_head,
                    head_dim,
                    scale: 0.25,
                    window: Some(3),
                    n: k,
                };
                let parts = b.op(project, vec![q, w_o], n_head * k);
                let m = 40;
                let w1 = b.weight(GgmlType::F32, &[k.into(), m.into()]);
                let mut ins = inputs(&mut b, x, w1);
                ins.push(parts);
                let into_input = Kernel::FusedMatMul {
                    weights: 1,
                    post_norm: None,
                    k,
                    n: m,
                    norm,
                    epilogue: Epilogue::Store,
                    partials: Some(Partials {
                        into: PartialsInto::Input,
                        count: n_head,
                    }),
                };
                let h = b.op(into_input, ins, m);
                let w2 = b.weight(GgmlType::F32, &[m.into(), k.into()]);
                let into_residual = Kernel::FusedMatMul {
                    weights: 1,
                    post_norm: None,
                    k: m,
                    n: k,
                    norm: None,
                    epilogue: Epilogue::Add,
                    partials: Some(Partials {
                        into: PartialsInto::Residual,
                        count: n_head,
                    }),
                };
                let y = b.op(into_residual, vec![h, w2, x, parts], k);
                compare(
                    &label(&format!(
                        "attention_project {n_head}/{n_kv_head}x{head_dim} and parts"
                    )),
                    &b.finish(y, k, kv),
                );
            }
        }
    }
}

/// Weights larger than one binding are split by rows across dispatches: force it with a tiny limit
/// and check the result is unchanged.
#[test]
fn weights_split_across_bindings_give_the_same_result() {
    if !gpu_available() {
        return;
    }
    // Bindings of 128 f32 rows of 256 values: every weight here is split, tables included.
    let max_binding = 128 * 1024;
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::F32] {
        let (k, n) = (256u32, 1000u32);
        let mut b = Builder::new(11);
        let x = b.input(k);
        let w = b.weight(ty, &[k.into(), n.into()]);
        let y = b.op(Kernel::MatMul { k, n }, vec![x, w], n);
        let path = b.finish_with_max_binding(y, n, no_kv(), max_binding);
        let plan = LoadedPlan::open(&path).unwrap();
        let parts = plan
            .header
            .gpu
            .dispatches
            .iter()
            .filter(|d| d.step == 1)
            .count();
        assert!(
            parts >= 2,
            "{ty}: {parts} dispatches for a weight of 1000 rows"
        );
        for d in &plan.header.gpu.dispatches {
            for binding in &d.bindings {
                if let GpuBinding::Weight { size, .. } = binding {
                    assert!(*size <= max_binding);
                }
            }
        }
        compare(&format!("split matmul {ty}"), &path);

        let (b, out) = Builder::embedding(12, ty, k);
        compare(
            &format!("split embed {ty}"),
            &b.finish_with_max_binding(out, k, no_kv(), max_binding),
        );

        // A fused head (norm prologue, residual epilogue) split the same way.
        let mut b = Builder::new(13);
        let x = b.input(k);
        // The residual comes from a (split) product: an embedding table of 1000-value rows would
        // not fit the small bindings.
        let w_r = b.weight(ty, &[k.into(), n.into()]);
        let r = b.op(Kernel::MatMul { k, n }, vec![x, w_r], n);
        let w = b.weight(ty, &[k.into(), n.into()]);
        let norm_w = b.weight(GgmlType::F32, &[k.into()]);
        let fused = Kernel::FusedMatMul {
            weights: 1,
            post_norm: None,
            k,
            n,
            norm: Some(1e-6),
            epilogue: Epilogue::Add,
            partials: None,
        };
        let y = b.op(fused, vec![x, w, norm_w, r], n);
        let path = b.finish_with_max_binding(y, n, no_kv(), max_binding);
        let plan = LoadedPlan::open(&path).unwrap();
        let dispatches: Vec<&GpuDispatch> = plan
            .header
            .gpu
            .dispatches
            .iter()
            .filter(|d| d.step == 2)
            .collect();
        let bindings = dispatches[0]
            .bindings
            .iter()
            .filter(|b| matches!(b, GpuBinding::Weight { size, .. } if *size <= max_binding))
            .count();
        assert!(
            dispatches.len() == 1 && bindings >= 2,
            "{ty}: {} dispatches, {bindings} weight bindings for a fused weight of 1000 rows",
            dispatches.len()
        );
        compare(&format!("split fused {ty}"), &path);
    }
}

/// What the fusions of other families build: weights of different types stacked in one product
/// (Q4_K_M's Q/K/V and gate/up), per-head q/k norms in the QKV epilogue (Gemma 3), and post-norm
/// sums formed in a prologue, from an operand or from attention parts, and stored for later steps.
#[test]
fn fused_products_of_mixed_types_head_norms_and_post_norms() {
    if !gpu_available() {
        return;
    }
    let k = 256u32;
    let fused = |weights, post_norm, norm, epilogue, partials| Kernel::FusedMatMul {
        k,
        n: 0,
        weights,
        post_norm,
        norm,
        epilogue,
        partials,
    };
    let with_n = |kernel: Kernel, rows: u32| match kernel {
        Kernel::FusedMatMul {
            k,
            weights,
            post_norm,
            norm,
            epilogue,
            partials,
            ..
        } => Kernel::FusedMatMul {
            k,
            n: rows,
            weights,
            post_norm,
            norm,
            epilogue,
            partials,
        },
        other => other,
    };
    // Three weights of three types, rows not multiples of a workgroup: store, and a GLU whose gate
    // and up differ in type.
    for types in [
        [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q6_K],
        [GgmlType::Q4_K, GgmlType::F32, GgmlType::Q4_1],
    ] {
        let rows = [70u32, 33, 90];
        let mut b = Builder::new(21);
        let x = b.input(k);
        let mut ins = vec![x];
        for (ty, r) in types.iter().zip(rows) {
            ins.push(b.weight(*ty, &[k.into(), r.into()]));
        }
        ins.push(b.weight(GgmlType::F32, &[k.into()]));
        let n = rows.iter().sum();
        let store = with_n(fused(3, None, Some(1e-5), Epilogue::Store, None), n);
        let y = b.op(store, ins, n);
        compare(
            &format!("stacked store {types:?}"),
            &b.finish(y, n, no_kv()),
        );

        let mut b = Builder::new(22);
        let x = b.input(k);
        let gate = b.weight(types[0], &[k.into(), 67]);
        let up = b.weight(types[1], &[k.into(), 67]);
        let glu = with_n(
            fused(2, None, None, Epilogue::Glu(UnaryOp::GeluTanh), None),
            134,
        );
        let y = b.op(glu, vec![x, gate, up], 67);
        compare(&format!("stacked glu {types:?}"), &b.finish(y, 67, no_kv()));
    }
    // QKV with V in another type, head norms before RoPE, read back through the attention; heads
    // of 64 (four to a workgroup) and 256 (one).
    for (n_head, n_kv_head, head_dim, neox) in [(3u32, 1u32, 64u32, false), (2, 1, 256, true)] {
        let (q_rows, kv_rows) = (n_head * head_dim, n_kv_head * head_dim);
        let n = q_rows + 2 * kv_rows;
        let mut b = Builder::new(23);
        let x = b.input(k);
        let qk = b.weight(GgmlType::Q5_0, &[k.into(), (q_rows + kv_rows).into()]);
        let v = b.weight(GgmlType::Q8_0, &[k.into(), kv_rows.into()]);
        let norm_w = b.weight(GgmlType::F32, &[k.into()]);
        let q_norm = b.weight(GgmlType::F32, &[head_dim.into()]);
        let k_norm = b.weight(GgmlType::F32, &[head_dim.into()]);
        let epilogue = Epilogue::RopeKv {
            layer: 0,
            n_head,
            n_kv_head,
            head_dim,
            n_rot: head_dim,
            base: 10000.0,
            neox,
            bias: false,
            qk_norm: Some(1e-6),
        };
        let qkv = with_n(fused(2, None, Some(1e-6), epilogue, None), n);
        let q = b.op(qkv, vec![x, qk, v, norm_w, q_norm, k_norm], q_rows);
        let attention = Kernel::Attention {
            layer: 0,
            n_head,
            n_kv_head,
            head_dim,
            scale: 0.125,
            window: None,
            append: false,
        };
        let y = b.op(attention, vec![q], q_rows);
        let kv = one_layer_kv(16, n_kv_head, head_dim, KvType::F16);
        compare(
            &format!("rope_kv with head norms {n_head}/{n_kv_head}x{head_dim}"),
            &b.finish(y, q_rows, kv),
        );
    }
    // A post-norm sum of an operand formed and stored by one product, then read by the next as
    // its residual; and one whose y is the sum of attention parts.
    let mut b = Builder::new(24);
    let r = b.input(k);
    let f = b.input(k);
    let w = b.weight(GgmlType::Q4_K, &[k.into(), 96]);
    let post_w = b.weight(GgmlType::F32, &[k.into()]);
    let norm_w = b.weight(GgmlType::F32, &[k.into()]);
    let product = with_n(fused(1, Some(1e-6), Some(1e-6), Epilogue::Store, None), 96);
    let formed = b.alloc(k.into());
    let h = b.op(product, vec![r, w, f, post_w, norm_w], 96);
    b.steps.last_mut().unwrap().formed = Some(formed);
    let y = read_formed_back(&mut b, (h, 96), GgmlType::Q8_0, formed, k);
    compare(
        "post-norm sum stored and read back",
        &b.finish(y, k, no_kv()),
    );

    let (n_head, n_kv_head, head_dim) = (2u32, 1u32, 64u32);
    let n = (n_head + 2 * n_kv_head) * head_dim;
    let mut b = Builder::new(25);
    let x = b.input(k);
    let w = b.weight(GgmlType::Q5_0, &[k.into(), n.into()]);
    let epilogue = Epilogue::RopeKv {
        layer: 0,
        n_head,
        n_kv_head,
        head_dim,
        n_rot: head_dim,
        base: 10000.0,
        neox: true,
        bias: false,
        qk_norm: None,
    };
    let q = b.op(
        with_n(fused(1, None, None, epilogue, None), n),
        vec![x, w],
        n_head * head_dim,
    );
    let w_o = b.weight(GgmlType::Q8_0, &[(n_head * head_dim).into(), k.into()]);
    let project = Kernel::AttentionProject {
        layer: 0,
        n_head,
        n_kv_head,
        head_dim,
        scale: 0.125,
        window: None,
        n: k,
    };
    let parts = b.op(project, vec![q, w_o], n_head * k);
    let w1 = b.weight(GgmlType::Q6_K, &[k.into(), 80]);
    let post_w = b.weight(GgmlType::F32, &[k.into()]);
    let norm_w = b.weight(GgmlType::F32, &[k.into()]);
    let partials = Some(Partials {
        into: PartialsInto::Input,
        count: n_head,
    });
    let gate_up = with_n(
        fused(
            1,
            Some(1e-6),
            Some(1e-6),
            Epilogue::Glu(UnaryOp::Silu),
            partials,
        ),
        80,
    );
    let formed = b.alloc(k.into());
    let h = b.op(gate_up, vec![x, w1, post_w, norm_w, parts], 40);
    b.steps.last_mut().unwrap().formed = Some(formed);
    let y = read_formed_back(&mut b, (h, 40), GgmlType::F32, formed, k);
    let kv = one_layer_kv(16, n_kv_head, head_dim, KvType::F16);
    compare("post-norm sum of attention parts", &b.finish(y, k, kv));
}

/// A product of `h` (`m` values a token) whose epilogue adds `formed` (`k` values), so the output
/// checks what an earlier step stored as its formed input as well as `h`.
fn read_formed_back(b: &mut Builder, (h, m): (Buf, u32), ty: GgmlType, formed: Buf, k: u32) -> Buf {
    let w = b.weight(ty, &[m.into(), k.into()]);
    let down = Kernel::FusedMatMul {
        k: m,
        n: k,
        weights: 1,
        post_norm: None,
        norm: None,
        epilogue: Epilogue::Add,
        partials: None,
    };
    b.op(down, vec![h, w, formed], k)
}
