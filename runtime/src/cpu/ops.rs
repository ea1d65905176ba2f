//! The CPU code of the plan's kernels, one method of [`Session`] per kernel, named after it:
//! `Session::run_step` hands each step here with its operands.

use super::kernels;
use super::{add_parts_in_parallel, par_rows, sum_parts_in_parallel, Heads, Packed, Part, Session};
use crate::plan::{Buf, Epilogue, LoadedPlan, Partials, PartialsInto, Step, MAX_STACKED_WEIGHTS};

/// A step's operands for `n_tokens` rows: views of the arena and of the plan's weights.
pub(super) struct Operands<'p> {
    pub step: &'p Step,
    plan: &'p LoadedPlan,
    arena: *mut f32,
    arena_len: usize,
    pub n_tokens: usize,
}

impl<'p> Operands<'p> {
    pub fn new(plan: &'p LoadedPlan, index: usize, arena: &mut [f32], n_tokens: usize) -> Self {
        Operands {
            step: &plan.header.steps[index],
            plan,
            arena: arena.as_mut_ptr(),
            arena_len: arena.len(),
            n_tokens,
        }
    }

    /// An arena operand's rows (`len_per_row` values each).
    pub fn read(&self, b: &Buf, len_per_row: usize) -> &'p [f32] {
        match *b {
            Buf::Arena { offset, .. } => {
                let start = offset as usize / 4;
                let len = self.n_tokens * len_per_row;
                assert!(start + len <= self.arena_len);
                // SAFETY: `validate` checked that every arena operand of every step lies inside
                // the arena for max_batch rows and that a step's output (and formed input)
                // overlaps none of its inputs, so the only mutable views alias nothing read.
                unsafe { std::slice::from_raw_parts(self.arena.add(start), len) }
            }
            Buf::Weight(_) => unreachable!("weights are read as bytes"),
        }
    }

    /// The step's output rows; called once per step.
    #[allow(clippy::mut_from_ref)]
    pub fn write(&self, per_row: usize) -> &'p mut [f32] {
        let Buf::Arena { offset, .. } = self.step.output else {
            unreachable!("validated")
        };
        self.arena_rows(offset, per_row)
    }

    /// Where a fused product with a post-norm stores the input it forms, if a later step reads it.
    #[allow(clippy::mut_from_ref)]
    pub fn formed(&self, per_row: usize) -> Option<&'p mut [f32]> {
        match self.step.formed {
            Some(Buf::Arena { offset, .. }) => Some(self.arena_rows(offset, per_row)),
            _ => None,
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn arena_rows(&self, offset: u64, per_row: usize) -> &'p mut [f32] {
        let start = offset as usize / 4;
        let len = self.n_tokens * per_row;
        assert!(start + len <= self.arena_len);
        // SAFETY: as in `read`; validated not to overlap the step's inputs.
        unsafe { std::slice::from_raw_parts_mut(self.arena.add(start), len) }
    }

    pub fn weight_f32(&self, b: &Buf) -> &'p [f32] {
        let Buf::Weight(i) = *b else {
            unreachable!("validated")
        };
        bytemuck::cast_slice(self.plan.weight(i))
    }

    /// Input `i`: an arena operand's rows or a weight's values.
    pub fn operand(&self, i: usize, per_row: usize) -> &'p [f32] {
        match self.step.inputs[i] {
            ref w @ Buf::Weight(_) => self.weight_f32(w),
            ref b => self.read(b, per_row),
        }
    }
}

impl<'p> Session<'p> {
    /// [`Kernel::Embed`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn embed(&mut self, ops: &Operands<'p>, n: u32, scale: f32) {
        let plan = self.plan;
        let Buf::Weight(table) = ops.step.inputs[0] else {
            unreachable!("validated")
        };
        let info = &plan.header.weights[table as usize];
        let row_bytes = info.ty.bytes_for(u64::from(n)).expect("validated") as usize;
        let bytes = plan.weight(table);
        // A table that is also the LM head may be stored packed for the head's product.
        let packed = info.packed.then(|| {
            let rows = info.dims[1] as usize;
            Packed::new(info.ty, bytes, n as usize, rows).expect("validated")
        });
        let ids = ops.read(&ops.step.inputs[1], 1);
        let out = ops.write(n as usize);
        for (id, row) in ids.iter().zip(out.chunks_exact_mut(n as usize)) {
            let id = id.to_bits() as usize;
            let stored = match packed {
                Some(p) => {
                    let buf = &mut self.embed_row[..row_bytes];
                    p.row_into(id, buf);
                    &*buf
                }
                None => &bytes[id * row_bytes..][..row_bytes],
            };
            crate::quant::dequantize(info.ty, stored, row).expect("validated");
            if scale != 1.0 {
                // As the unfused scale step multiplied them.
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
    }

    /// [`Kernel::RmsNorm`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rms_norm(&mut self, ops: &Operands<'p>, n: u32, groups: u32, eps: f32) {
        let (per_row, n) = ((n * groups) as usize, n as usize);
        let (x, w) = (
            ops.read(&ops.step.inputs[0], per_row),
            ops.weight_f32(&ops.step.inputs[1]),
        );
        par_rows(&self.matmul, ops.write(per_row), n, |r, o| {
            kernels::rms_norm(&x[r.start * n..r.end * n], w, o, n, eps)
        });
    }

    /// [`Kernel::MatMul`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul(&mut self, ops: &Operands<'p>, k: u32, n: u32) {
        let plan = self.plan;
        let Buf::Weight(w) = ops.step.inputs[1] else {
            unreachable!("validated")
        };
        let ty = plan.header.weights[w as usize].ty;
        let x = ops.read(&ops.step.inputs[0], k as usize);
        let y = ops.write(n as usize);
        let (k, n) = (k as usize, n as usize);
        self.matmul.run(w as usize, ty, plan.weight(w), x, y, k, n);
    }

    /// [`Kernel::Rope`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope(
        &mut self,
        ops: &Operands<'p>,
        n_head: u32,
        head_dim: u32,
        n_rot: u32,
        base: f32,
        neox: bool,
    ) {
        let per_row = (n_head * head_dim) as usize;
        let table = self
            .rope
            .iter()
            .find(|t| t.base == base && t.n_rot == n_rot as usize)
            .expect("built at load");
        let (x, out) = (ops.read(&ops.step.inputs[0], per_row), ops.write(per_row));
        for run in &self.runs {
            let rows = run.first_row * per_row..(run.first_row + run.len) * per_row;
            let (h, hd) = (n_head as usize, head_dim as usize);
            table.apply(&x[rows.clone()], &mut out[rows], h, hd, neox, run.start);
        }
    }

    /// [`Kernel::Attention`].
    pub(super) fn attention(&mut self, ops: &Operands<'p>, heads: Heads, append: bool) {
        let plan = self.plan;
        let (hd, h) = (heads.head_dim as usize, heads.n_head as usize);
        let lay = plan.header.kv.layers[heads.layer as usize];
        let kv_row = lay.row_len();
        if append {
            let k_new = ops.read(&ops.step.inputs[1], kv_row);
            let v_new = ops.read(&ops.step.inputs[2], kv_row);
            let rows = k_new.chunks_exact(kv_row).zip(v_new.chunks_exact(kv_row));
            for (at, (k, v)) in self.rows.iter().zip(rows) {
                self.kv.store(lay.k_offset, hd, at.slot, k);
                self.kv.store(lay.v_offset, hd, at.slot, v);
            }
        }
        let q = ops.read(&ops.step.inputs[0], h * hd);
        self.attend(heads, q, ops.write(h * hd));
    }

    /// [`Kernel::AttentionProject`].
    pub(super) fn attention_project(&mut self, ops: &Operands<'p>, heads: Heads, n: u32) {
        let plan = self.plan;
        let (h, n) = (heads.n_head as usize, n as usize);
        let k = h * heads.head_dim as usize;
        let q = ops.read(&ops.step.inputs[0], k);
        let mut attended = std::mem::take(&mut self.attended);
        self.attend(heads, q, &mut attended[..ops.n_tokens * k]);
        let Buf::Weight(w) = ops.step.inputs[1] else {
            unreachable!("validated")
        };
        let ty = plan.header.weights[w as usize].ty;
        let projected = &mut self.wide[..ops.n_tokens * n];
        let x = &attended[..ops.n_tokens * k];
        self.matmul
            .run(w as usize, ty, plan.weight(w), x, projected, k, n);
        self.attended = attended;
        // The whole projection is part 0 and the other parts are zero: they sum to what
        // the GPU's per-head parts sum to, and adding zeros keeps every bit of the
        // unfused result.
        for (row, parts) in projected
            .chunks_exact(n)
            .zip(ops.write(h * n).chunks_exact_mut(h * n))
        {
            let (first, rest) = parts.split_at_mut(n);
            first.copy_from_slice(row);
            rest.fill(0.0);
        }
    }

    /// [`Kernel::FusedMatMul`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_matmul(
        &mut self,
        ops: &Operands<'p>,
        k: u32,
        n: u32,
        post_norm: Option<f32>,
        norm: Option<f32>,
        epilogue: Epilogue,
        partials: Option<Partials>,
    ) {
        let plan = self.plan;
        let layout = ops.step.kernel.fused_inputs().expect("a fused product");
        let (k, n) = (k as usize, n as usize);
        let parts_into = partials.map(|p| p.into);
        let parts = |len: usize| {
            let count = partials.expect("called with parts").count as usize;
            let i = layout.parts.expect("validated");
            (ops.read(&ops.step.inputs[i], count * len), count)
        };
        let weights_of = |w: &Buf| {
            let Buf::Weight(w) = *w else {
                unreachable!("validated")
            };
            let info = &plan.header.weights[w as usize];
            Part {
                id: w as usize,
                ty: info.ty,
                w: plan.weight(w),
                n: info.dims[1] as usize,
            }
        };
        let mut stacked = [weights_of(&ops.step.inputs[1]); MAX_STACKED_WEIGHTS];
        for (slot, i) in stacked.iter_mut().zip(layout.weights.clone()) {
            *slot = weights_of(&ops.step.inputs[i]);
        }
        let stacked = &stacked[..layout.weights.len()];
        let mut x = ops.read(&ops.step.inputs[0], k);
        if let Some(eps) = post_norm {
            // The formed input `x + rmsnorm(y) * w`, y an operand or the sum of the parts.
            let y = match layout.post_y {
                Some(i) => ops.read(&ops.step.inputs[i], k),
                None => {
                    let summed = &mut self.summed[..ops.n_tokens * k];
                    sum_parts_in_parallel(&self.matmul, parts(k), summed, k);
                    summed
                }
            };
            let w = ops.weight_f32(&ops.step.inputs[layout.post_weight.expect("validated")]);
            let formed = match ops.formed(k) {
                Some(stored) => stored,
                None => &mut self.formed[..ops.n_tokens * k],
            };
            par_rows(&self.matmul, formed, k, |r, o| {
                let rows = r.start * k..r.end * k;
                kernels::post_norm_add(&x[rows.clone()], &y[rows], w, o, k, eps)
            });
            x = formed;
        } else if parts_into == Some(PartialsInto::Input) {
            let summed = &mut self.summed[..ops.n_tokens * k];
            add_parts_in_parallel(&self.matmul, x, parts(k), summed, k);
            x = summed;
        }
        if let Some(eps) = norm {
            let normed = &mut self.normed[..ops.n_tokens * k];
            let w = ops.weight_f32(&ops.step.inputs[layout.norm_weight.expect("validated")]);
            par_rows(&self.matmul, normed, k, |r, o| {
                kernels::rms_norm(&x[r.start * k..r.end * k], w, o, k, eps)
            });
            x = normed;
        }
        let epilogue_input = layout.epilogue.map(|i| &ops.step.inputs[i]);
        match epilogue {
            Epilogue::Store => self.matmul.run_stacked(stacked, x, ops.write(n), k),
            Epilogue::Add => {
                let y = ops.write(n);
                self.matmul.run_stacked(stacked, x, y, k);
                let mut residual = ops.read(epilogue_input.expect("validated"), n);
                if parts_into == Some(PartialsInto::Residual) {
                    let summed = &mut self.summed[..ops.n_tokens * n];
                    add_parts_in_parallel(&self.matmul, residual, parts(n), summed, n);
                    residual = summed;
                }
                par_rows(&self.matmul, y, n, |r, o| {
                    for (o, &r) in o.iter_mut().zip(&residual[r.start * n..r.end * n]) {
                        // r + o, as the unfused add computed it (addition commutes
                        // exactly).
                        *o += r;
                    }
                });
            }
            Epilogue::Glu(op) => {
                let wide = &mut self.wide[..ops.n_tokens * n];
                self.matmul.run_stacked(stacked, x, wide, k);
                let wide = &*wide;
                let m = n / 2;
                par_rows(&self.matmul, ops.write(m), m, |r, out| {
                    for (t, o) in r.zip(out.chunks_exact_mut(m)) {
                        let (gate, up) = wide[t * n..(t + 1) * n].split_at(m);
                        kernels::glu(gate, up, o, op);
                    }
                });
            }
            Epilogue::RopeKv {
                layer,
                n_head,
                n_kv_head,
                head_dim,
                n_rot,
                base,
                neox,
                bias,
                qk_norm,
            } => {
                let wide = &mut self.wide[..ops.n_tokens * n];
                self.matmul.run_stacked(stacked, x, wide, k);
                if bias {
                    let b = ops.weight_f32(epilogue_input.expect("validated"));
                    for row in wide.chunks_exact_mut(n) {
                        for (v, &b) in row.iter_mut().zip(b) {
                            *v += b;
                        }
                    }
                }
                let (hd, h, hkv) = (head_dim as usize, n_head as usize, n_kv_head as usize);
                let (q_len, kv_len) = (h * hd, hkv * hd);
                if let Some(eps) = qk_norm {
                    let at = layout.qk_norm.expect("validated");
                    let (wq, wk) = (
                        ops.weight_f32(&ops.step.inputs[at]),
                        ops.weight_f32(&ops.step.inputs[at + 1]),
                    );
                    for row in wide.chunks_exact_mut(n) {
                        let (q, kv) = row.split_at_mut(q_len);
                        kernels::rms_norm_in_place(q, wq, hd, eps);
                        kernels::rms_norm_in_place(&mut kv[..kv_len], wk, hd, eps);
                    }
                }
                let table = self
                    .rope
                    .iter()
                    .find(|t| t.base == base && t.n_rot == n_rot as usize)
                    .expect("built at load");
                let lay = plan.header.kv.layers[layer as usize];
                let out = ops.write(q_len);
                let rotated = &mut self.rotated[..kv_len];
                for (t, (row, at)) in wide.chunks_exact(n).zip(&self.rows).enumerate() {
                    let (q, kv) = row.split_at(q_len);
                    let (k_new, v_new) = kv.split_at(kv_len);
                    let pos = at.pos;
                    table.apply(q, &mut out[t * q_len..][..q_len], h, hd, neox, pos);
                    table.apply(k_new, rotated, hkv, hd, neox, pos);
                    self.kv.store(lay.k_offset, hd, at.slot, rotated);
                    self.kv.store(lay.v_offset, hd, at.slot, v_new);
                }
            }
        }
    }
}
