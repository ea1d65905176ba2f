//! A synthetic model compiled and run by llamart, against an independent, deliberately naive f64
//! forward pass written here from the model's definition. Covers grouped-query attention, Q/K/V
//! biases, an untied head and multi-step decoding without any download.

use llamac::gguf::GgufFile;
use llamac::synthetic::TinyLlama;
use llamart::cpu::Session;
use llamart::plan::LoadedPlan;

struct Weights<'a>(&'a GgufFile);

impl Weights<'_> {
    /// A weight as rows: ggml `[k, n]` is n rows of k values.
    fn get(&self, name: &str) -> Option<Vec<Vec<f64>>> {
        let t = self.0.tensor(name)?;
        let values: Vec<f64> = self
            .0
            .tensor_data(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect();
        Some(
            values
                .chunks(t.dims[0] as usize)
                .map(<[f64]>::to_vec)
                .collect(),
        )
    }

    fn vec(&self, name: &str) -> Vec<f64> {
        self.get(name).unwrap().concat()
    }
}

fn matvec(w: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    w.iter()
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64]) -> Vec<f64> {
    let scale = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + 1e-5).sqrt();
    x.iter().zip(w).map(|(v, g)| v * scale * g).collect()
}

/// Rotates adjacent pairs (llama's "normal" RoPE) of each head.
fn rope(x: &mut [f64], head_dim: usize, pos: usize) {
    for head in x.chunks_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let theta = pos as f64 * 10000f64.powf(-2.0 * i as f64 / head_dim as f64);
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * theta.cos() - b * theta.sin();
            head[2 * i + 1] = a * theta.sin() + b * theta.cos();
        }
    }
}

fn reference_logits(m: &TinyLlama, file: &GgufFile, tokens: &[u32]) -> Vec<Vec<f64>> {
    let w = Weights(file);
    let (d, hd) = (m.n_embd as usize, (m.n_embd / m.n_head) as usize);
    let group = (m.n_head / m.n_head_kv) as usize;
    let embd = w.get("token_embd.weight").unwrap();
    let bias = |name: &str, n: usize| w.get(name).map_or(vec![0.0; n], |b| b.concat());
    // Per layer: the cached key rows and value rows.
    type Rows = Vec<Vec<f64>>;
    let mut caches: Vec<(Rows, Rows)> = vec![(vec![], vec![]); m.n_layer as usize];
    let mut out = Vec::new();
    for (pos, &tok) in tokens.iter().enumerate() {
        let mut x = embd[tok as usize].clone();
        for (l, (kc, vc)) in caches.iter_mut().enumerate() {
            let p = format!("blk.{l}");
            let h = rms_norm(&x, &w.vec(&format!("{p}.attn_norm.weight")));
            let add = |v: Vec<f64>, b: Vec<f64>| {
                v.iter().zip(&b).map(|(a, c)| a + c).collect::<Vec<f64>>()
            };
            let kv_dim = (m.n_head_kv as usize) * hd;
            let mut q = add(
                matvec(&w.get(&format!("{p}.attn_q.weight")).unwrap(), &h),
                bias(&format!("{p}.attn_q.bias"), d),
            );
            let mut k = add(
                matvec(&w.get(&format!("{p}.attn_k.weight")).unwrap(), &h),
                bias(&format!("{p}.attn_k.bias"), kv_dim),
            );
            let v = add(
                matvec(&w.get(&format!("{p}.attn_v.weight")).unwrap(), &h),
                bias(&format!("{p}.attn_v.bias"), kv_dim),
            );
            rope(&mut q, hd, pos);
            rope(&mut k, hd, pos);
            kc.push(k);
            vc.push(v);
            let mut attn = vec![0.0; d];
            for head in 0..m.n_head as usize {
                let kvh = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                let scores: Vec<f64> = kc
                    .iter()
                    .map(|kr| {
                        qh.iter()
                            .zip(&kr[kvh * hd..(kvh + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, vr) in vc.iter().enumerate() {
                    for i in 0..hd {
                        attn[head * hd + i] += e[j] / sum * vr[kvh * hd + i];
                    }
                }
            }
            let o = matvec(&w.get(&format!("{p}.attn_output.weight")).unwrap(), &attn);
            x = x.iter().zip(&o).map(|(a, b)| a + b).collect();
            let h = rms_norm(&x, &w.vec(&format!("{p}.ffn_norm.weight")));
            let g = matvec(&w.get(&format!("{p}.ffn_gate.weight")).unwrap(), &h);
            let u = matvec(&w.get(&format!("{p}.ffn_up.weight")).unwrap(), &h);
            let a: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = matvec(&w.get(&format!("{p}.ffn_down.weight")).unwrap(), &a);
            x = x.iter().zip(&down).map(|(a, b)| a + b).collect();
        }
        let x = rms_norm(&x, &w.vec("output_norm.weight"));
        let head = w.get("output.weight").unwrap_or_else(|| embd.clone());
        out.push(matvec(&head, &x));
    }
    out
}

fn check(model: TinyLlama, batch: u32) {
    let bytes = model.to_gguf();
    let dir = llama_e2e::scratch_dir();
    let gguf = dir.join(format!(
        "tiny-{}-{}-{batch}.gguf",
        model.qkv_bias, model.untied_head
    ));
    std::fs::write(&gguf, &bytes).unwrap();
    let plan_path = gguf.with_extension("plan");
    let options = llamac::compile::CompileOptions {
        ctx: Some(32),
        max_batch: batch,
        kv_tokens: None,
        max_seqs: llamart::plan::DEFAULT_MAX_SEQS,
        activations: llamart::plan::Activations::Q8,
        // The reference keeps keys and values in f64: an f16 cache would be its rounding, not
        // the interpreter, that the 1e-4 bound measures.
        kv_type: llamart::plan::KvType::F32,
        bandwidth_gbps: None,
        disabled: llamac::passes::PassSet::NONE,
    };
    llamac::compile::compile(&gguf, &plan_path, options).unwrap();
    let plan = LoadedPlan::open(&plan_path).unwrap();
    let mut session = Session::new(&plan, 2).unwrap();

    let tokens: Vec<u32> = (0..20)
        .map(|i| (i * 7 + 3) % model.n_vocab as u32)
        .collect();
    let expected = reference_logits(&model, &GgufFile::from_bytes(bytes).unwrap(), &tokens);
    // Prefill the first 13 in chunks of the plan's batch, then decode the rest one at a time.
    let mut got: Vec<Vec<f32>> = Vec::new();
    for chunk in tokens[..13].chunks(batch as usize) {
        got.extend(
            session
                .eval(chunk)
                .unwrap()
                .chunks(model.n_vocab as usize)
                .map(<[f32]>::to_vec),
        );
    }
    for &t in &tokens[13..] {
        got.push(session.eval(&[t]).unwrap().to_vec());
    }
    let mut worst = 0f64;
    for (g, e) in got.iter().zip(&expected) {
        for (a, b) in g.iter().zip(e) {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "{model:?}: max |llamart - reference| = {worst}"
    );
}

#[test]
fn tiny_llama_matches_the_reference() {
    check(TinyLlama::default(), 8);
}

#[test]
fn tiny_llama_with_biases_untied_head_and_single_token_batches_matches_the_reference() {
    check(
        TinyLlama {
            qkv_bias: true,
            untied_head: true,
            n_head: 4,
            n_head_kv: 1,
            ..TinyLlama::default()
        },
        1,
    );
}
