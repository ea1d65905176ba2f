//! The GPU backend: replays the plan's GPU section on wgpu (Vulkan, Metal, DX12).
//!
//! Everything is created once, at load: weight buffers (uploaded once), the arena, the KV cache,
//! every pipeline and every bind group. A step of n tokens is then one small parameter write (and,
//! for a step of several sequences, one of their page tables), one command encoder with one
//! compute pass holding all dispatches, one submit, and a read back of the logits.

use std::num::NonZeroU64;

use thiserror::Error;

use crate::cpu::EvalError;
use crate::plan::{Buf, GpuBinding, LoadedPlan};

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("no GPU adapter found (is a Vulkan, Metal or DX12 driver installed? for a software one: apt-get install mesa-vulkan-drivers)")]
    NoAdapter,
    #[error("GPU '{adapter}' lacks what the plan needs: {what}")]
    Unsupported { adapter: String, what: String },
    #[error("GPU device request failed: {0}")]
    Device(String),
    #[error("GPU error while {during}: {why}")]
    Runtime { during: &'static str, why: String },
    #[error("the plan is inconsistent: {0}")]
    Invalid(String),
}

/// A description of the adapter a session runs on.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    /// A software rasterizer (lavapipe, WARP): correct but slow.
    pub software: bool,
}

fn summary(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        software: info.device_type == wgpu::DeviceType::Cpu,
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// The adapter the GPU backend would use, if any: hardware preferred over software.
pub fn probe() -> Option<AdapterSummary> {
    let adapter = pollster::block_on(instance().request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .ok()?;
    Some(summary(&adapter.get_info()))
}

/// Per-step counts of what the GPU does, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    pub submits: u32,
    pub compute_passes: u32,
    pub dispatches: u32,
    pub bytes_read_back: u64,
    pub encode_nanos: u64,
}

pub struct GpuSession<'p> {
    plan: &'p LoadedPlan,
    pub adapter: AdapterSummary,
    device: wgpu::Device,
    queue: wgpu::Queue,
    params: wgpu::Buffer,
    /// The per-step parameters as written: the header, then each row's position, slot and
    /// page-table start.
    params_words: Vec<u32>,
    /// The step's page tables, and a staging copy; `identity_pages` says whether the buffer holds
    /// the single-sequence table (position p in slot p) at entry 0.
    pages: wgpu::Buffer,
    page_words: Vec<u32>,
    identity_pages: bool,
    /// A step's wanted logits rows, as runs (first row, rows): at most one per sequence.
    wanted_runs: Vec<(usize, usize)>,
    arena: wgpu::Buffer,
    readback: wgpu::Buffer,
    candidates: wgpu::Buffer,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_groups: Vec<wgpu::BindGroup>,
    top_k_bind_group: wgpu::BindGroup,
    /// The top-k kernel's output as read back: ids, logits (bits), log-sum-exp (bits).
    candidate_words: Vec<u32>,
    logits: Vec<f32>,
    n_past: usize,
    pub last_step: StepStats,
}

fn buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        // Zero-sized buffers cannot be bound; every buffer holds at least one word.
        size: size.max(4).div_ceil(4) * 4,
        usage,
        mapped_at_creation: false,
    })
}

impl<'p> GpuSession<'p> {
    pub fn new(plan: &'p LoadedPlan) -> Result<Self, GpuError> {
        let h = &plan.header;
        let gpu = &h.gpu;
        let adapter =
            pollster::block_on(instance().request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .map_err(|_| GpuError::NoAdapter)?;
        let info = summary(&adapter.get_info());
        let have = adapter.limits();
        let req = &gpu.requirements;
        let unsupported = |what: String| GpuError::Unsupported {
            adapter: info.name.clone(),
            what,
        };
        let checks = [
            (
                "max_storage_buffer_binding_size",
                req.max_storage_binding_bytes,
                have.max_storage_buffer_binding_size,
            ),
            (
                "max_buffer_size",
                req.max_buffer_bytes,
                have.max_buffer_size,
            ),
            (
                "max_compute_workgroups_per_dimension",
                req.max_workgroups_per_dimension.into(),
                have.max_compute_workgroups_per_dimension.into(),
            ),
            (
                "max_compute_invocations_per_workgroup",
                req.workgroup_size.into(),
                have.max_compute_invocations_per_workgroup.into(),
            ),
            (
                "max_compute_workgroup_storage_size",
                req.workgroup_storage_bytes.into(),
                have.max_compute_workgroup_storage_size.into(),
            ),
            (
                "max_storage_buffers_per_shader_stage",
                req.storage_buffers_per_stage.into(),
                have.max_storage_buffers_per_shader_stage.into(),
            ),
            (
                "max_uniform_buffer_binding_size",
                req.uniform_binding_bytes,
                have.max_uniform_buffer_binding_size,
            ),
        ];
        for (name, need, got) in checks {
            if need > got {
                return Err(unsupported(format!(
                    "{name} {need} (the device offers {got})"
                )));
            }
        }
        if u64::from(have.min_storage_buffer_offset_alignment) > req.offset_alignment {
            return Err(unsupported(format!(
                "binding offsets aligned to {} bytes (the device needs {})",
                req.offset_alignment, have.min_storage_buffer_offset_alignment
            )));
        }
        if let Some(f) = req.features.first() {
            return Err(unsupported(format!(
                "feature {f}, which this llamart does not know"
            )));
        }
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: req.max_storage_binding_bytes.max(1 << 27),
            max_buffer_size: req.max_buffer_bytes.max(1 << 28),
            max_storage_buffers_per_shader_stage: req.storage_buffers_per_stage.max(8),
            max_compute_workgroups_per_dimension: req.max_workgroups_per_dimension.max(65535),
            max_uniform_buffer_binding_size: req.uniform_binding_bytes.max(16384),
            ..wgpu::Limits::downlevel_defaults().using_resolution(have.clone())
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("llamart"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;

        use wgpu::BufferUsages as U;
        let storage = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let params_bytes = h.limits.gpu_params_bytes();
        let params = buffer(&device, "params", params_bytes, U::UNIFORM | U::COPY_DST);
        let pages = buffer(
            &device,
            "page tables",
            h.limits.gpu_page_table_bytes(),
            U::STORAGE | U::COPY_DST,
        );
        let arena = buffer(&device, "arena", h.arena.bytes, storage);
        let kv = buffer(&device, "kv cache", h.kv.bytes, storage);
        let logits_len = h.limits.max_batch as usize * h.model.n_vocab as usize;
        let readback = buffer(
            &device,
            "logits readback",
            logits_len as u64 * 4,
            U::MAP_READ | U::COPY_DST,
        );
        let candidate_words = 2 * gpu.max_top_k as usize + 1;
        let candidates = buffer(
            &device,
            "top-k candidates",
            candidate_words as u64 * 4,
            storage,
        );
        let weights: Vec<wgpu::Buffer> = (0..h.weights.len() as u32)
            .map(|i| {
                let info = &h.weights[i as usize];
                // The GPU's loaders read plain rows: weights stored packed for the CPU are
                // re-laid into rows as they are copied into GPU memory (validated at load).
                let unpacked = if info.packed {
                    let rows = (info.dims.len() == 2)
                        .then(|| {
                            let (k, n) = (info.dims[0] as usize, info.dims[1] as usize);
                            crate::cpu::dot::Packed::new(info.ty, plan.weight(i), k, n)
                        })
                        .flatten()
                        .ok_or_else(|| {
                            GpuError::Invalid(format!(
                                "weight '{}' is marked packed, but {} {:?} has no packed layout",
                                info.name, info.ty, info.dims
                            ))
                        })?;
                    Some(rows.unpack())
                } else {
                    None
                };
                let bytes = unpacked.as_deref().unwrap_or(plan.weight(i));
                let b = buffer(
                    &device,
                    &h.weights[i as usize].name,
                    bytes.len() as u64,
                    U::STORAGE | U::COPY_DST,
                );
                // Weight sizes are not always whole words; the tail word is padded with zeros.
                let whole = bytes.len() / 4 * 4;
                queue.write_buffer(&b, 0, &bytes[..whole]);
                if whole < bytes.len() {
                    let mut tail = [0u8; 4];
                    tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                    queue.write_buffer(&b, whole as u64, &tail);
                }
                Ok(b)
            })
            .collect::<Result<_, GpuError>>()?;

        let pipelines: Vec<wgpu::ComputePipeline> = gpu
            .kernels
            .iter()
            .map(|k| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&k.label),
                    source: wgpu::ShaderSource::Wgsl(k.wgsl.as_str().into()),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&k.label),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        let logits_step = h.steps.len().checked_sub(1);
        let computes_logits = |step: u32| {
            logits_step.is_some_and(|s| s == step as usize && h.steps[s].output == h.logits)
        };
        if let Some(d) = gpu
            .dispatches
            .iter()
            .find(|d| d.logits && !computes_logits(d.step))
        {
            return Err(GpuError::Runtime {
                during: "loading",
                why: format!(
                    "a dispatch of step {} is marked as computing only the logits, which the last \
                     step alone does",
                    d.step
                ),
            });
        }
        let mut bind_groups = Vec::with_capacity(gpu.dispatches.len() + 1);
        for d in gpu.dispatches.iter().chain([&gpu.top_k]) {
            let pipeline = pipelines
                .get(d.kernel as usize)
                .ok_or_else(|| GpuError::Runtime {
                    during: "loading",
                    why: format!("dispatch names kernel {} of {}", d.kernel, pipelines.len()),
                })?;
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            }];
            for (i, b) in d.bindings.iter().enumerate() {
                let (buf, offset, size) = match *b {
                    GpuBinding::Weight {
                        index,
                        offset,
                        size,
                    } => (&weights[index as usize], offset, size),
                    GpuBinding::Arena { offset, size } => (&arena, offset, size),
                    GpuBinding::Kv { offset, size } => (&kv, offset, size),
                    GpuBinding::Candidates { offset, size } => (&candidates, offset, size),
                    GpuBinding::Pages { offset, size } => (&pages, offset, size),
                };
                if offset + size > buf.size() {
                    return Err(GpuError::Runtime {
                        during: "loading",
                        why: format!(
                            "binding {b:?} of step {} exceeds its {}-byte buffer",
                            d.step,
                            buf.size()
                        ),
                    });
                }
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: buf,
                        offset,
                        size: NonZeroU64::new(size.max(4)),
                    }),
                });
            }
            bind_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            }));
        }
        let top_k_bind_group = bind_groups
            .pop()
            .expect("the top-k dispatch was added last");
        // Surface validation errors from pipeline and bind group creation now, not at first use.
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Runtime {
                during: "loading",
                why: e.to_string(),
            })?;
        Ok(GpuSession {
            plan,
            adapter: info,
            device,
            queue,
            params,
            params_words: vec![0; params_bytes as usize / 4],
            pages,
            page_words: vec![0; h.limits.gpu_page_table_bytes() as usize / 4],
            identity_pages: false,
            wanted_runs: Vec::with_capacity(h.limits.max_seqs as usize),
            arena,
            readback,
            candidates,
            pipelines,
            bind_groups,
            top_k_bind_group,
            candidate_words: vec![0; candidate_words],
            logits: vec![0.0; logits_len],
            n_past: 0,
            last_step: StepStats::default(),
        })
    }

    /// The plan's header.
    pub fn plan_header(&self) -> &'p crate::plan::PlanHeader {
        &self.plan.header
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Evaluates `tokens` after the cached ones; returns one row of logits per token.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        let bytes = self.run(tokens, Wanted::AllRows)?;
        self.read_logits(bytes)
    }

    /// Evaluates `tokens` and returns the last token's row of logits; the logits step computes
    /// that row alone.
    pub fn eval_last(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        let bytes = self.run(tokens, Wanted::LastRow)?;
        self.read_logits(bytes)
    }

    /// Evaluates `tokens` for the cache only: the logits step is skipped and nothing is read
    /// back.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), EvalError> {
        self.run(tokens, Wanted::Nothing).map(|_| ())
    }

    fn read_logits(&mut self, bytes: u64) -> Result<&[f32], EvalError> {
        let words = bytes as usize / 4;
        let slice = self.readback.slice(..bytes);
        let logits = &mut self.logits[..words];
        map_and_copy(&self.device, &slice, |view| {
            logits.copy_from_slice(bytemuck::cast_slice(view))
        })?;
        self.readback.unmap();
        Ok(&self.logits[..words])
    }

    /// Evaluates `tokens` and returns the last token's `k` largest logits, found on the device,
    /// in `out`; only those and the log-sum-exp are read back.
    pub fn eval_top(
        &mut self,
        tokens: &[u32],
        k: usize,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<f64, EvalError> {
        let max = self.plan.header.gpu.max_top_k as usize;
        if k > max {
            // More candidates than the kernel returns: take the whole row instead.
            let row_len = self.plan.header.model.n_vocab as usize;
            let logits = self.eval(tokens)?;
            let row = &logits[logits.len() - row_len..];
            crate::eval::top_logits_into(row, k, out);
            return Ok(crate::eval::log_sum_exp(row));
        }
        let bytes = self.run(tokens, Wanted::TopK(k as u32))?;
        let words = &mut self.candidate_words[..bytes as usize / 4];
        // `run` copied the candidates into the readback buffer.
        let slice = self.readback.slice(..bytes);
        map_and_copy(&self.device, &slice, |view| {
            words.copy_from_slice(bytemuck::cast_slice(view))
        })?;
        self.readback.unmap();
        out.clear();
        out.extend((0..k).map(|i| (words[i], f32::from_bits(words[k + i]))));
        Ok(f64::from(f32::from_bits(words[2 * k])))
    }

    /// One step of the single sequence, whose positions are its cache slots. Returns the bytes
    /// to read back.
    fn run(&mut self, tokens: &[u32], wanted: Wanted) -> Result<u64, EvalError> {
        let h = &self.plan.header;
        crate::cpu::check_step(h, self.n_past, tokens)?;
        if !self.identity_pages {
            let pps = h.limits.pages_per_sequence() as usize;
            for (i, w) in self.page_words[..pps].iter_mut().enumerate() {
                *w = i as u32;
            }
            let words = &self.page_words[..pps];
            self.queue
                .write_buffer(&self.pages, 0, bytemuck::cast_slice(words));
            self.identity_pages = true;
        }
        for t in 0..tokens.len() {
            let pos = (self.n_past + t) as u32;
            self.params_words[4 + 4 * t..][..4].copy_from_slice(&[pos, pos, 0, 0]);
        }
        self.queue
            .write_buffer(&self.arena, self.ids_offset(), bytemuck::cast_slice(tokens));
        let bytes = self.submit(tokens.len(), 1, wanted, &[])?;
        self.n_past += tokens.len();
        Ok(bytes)
    }

    fn ids_offset(&self) -> u64 {
        let Buf::Arena { offset, .. } = self.plan.header.token_ids else {
            unreachable!("validated")
        };
        offset
    }

    /// Evaluates one step of several sequences (each with its own positions and page table,
    /// [`crate::batch::check`]ed) and returns the wanted logits rows, sequence after sequence. The
    /// logits step runs on the rows from the first wanted one; only the wanted rows are read
    /// back.
    pub fn step(&mut self, seqs: &[crate::batch::SeqStep]) -> Result<&[f32], EvalError> {
        use crate::batch::Logits;
        let h = &self.plan.header;
        crate::batch::check(h, seqs)?;
        let (page, pps) = (
            h.limits.page_tokens as usize,
            h.limits.pages_per_sequence() as usize,
        );
        let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let ids_at = self.ids_offset();
        // The rows whose logits are wanted, as runs (first row, rows).
        let mut runs = std::mem::take(&mut self.wanted_runs);
        runs.clear();
        let mut wanted_rows = 0;
        let mut row = 0;
        for (i, s) in seqs.iter().enumerate() {
            let table = i * pps;
            let entries = s.pages.len().min(pps);
            self.page_words[table..table + entries].copy_from_slice(&s.pages[..entries]);
            for t in 0..s.tokens.len() {
                let pos = s.start + t;
                let slot = s.pages[pos / page] as usize * page + pos % page;
                self.params_words[4 + 4 * (row + t)..][..4].copy_from_slice(&[
                    pos as u32,
                    slot as u32,
                    table as u32,
                    0,
                ]);
            }
            self.queue.write_buffer(
                &self.arena,
                ids_at + 4 * row as u64,
                bytemuck::cast_slice(s.tokens),
            );
            let len = s.tokens.len();
            let (first, count) = match s.logits {
                Logits::None => (row, 0),
                Logits::Last => (row + len - 1, 1),
                Logits::All => (row, len),
            };
            if count > 0 {
                match runs.last_mut() {
                    Some(last) if last.0 + last.1 == first => last.1 += count,
                    _ => runs.push((first, count)),
                }
                wanted_rows += count;
            }
            row += len;
        }
        let used = seqs.len() * pps;
        self.queue.write_buffer(
            &self.pages,
            0,
            bytemuck::cast_slice(&self.page_words[..used]),
        );
        self.identity_pages = false;
        let wanted = if wanted_rows == 0 {
            Wanted::Nothing
        } else {
            Wanted::Rows
        };
        let submitted = self.submit(n, seqs.len(), wanted, &runs);
        self.wanted_runs = runs;
        match submitted? {
            0 => Ok(&[]),
            bytes => self.read_logits(bytes),
        }
    }

    /// Records and submits one step of `n` rows whose metadata is in `params_words`: all
    /// dispatches in one pass, then what is wanted of the logits copied to the readback buffer
    /// (with `Wanted::Rows`, the `rows` runs, one after another). Returns the bytes to read back.
    fn submit(
        &mut self,
        n: usize,
        n_seqs: usize,
        wanted: Wanted,
        rows: &[(usize, usize)],
    ) -> Result<u64, EvalError> {
        let h = &self.plan.header;
        let encode_start = std::time::Instant::now();
        let (k, first_row) = match wanted {
            Wanted::AllRows | Wanted::Nothing => (0, 0),
            // The logits step starts at the first wanted row.
            Wanted::Rows => (0, rows.first().map_or(0, |r| r.0 as u32)),
            Wanted::LastRow => (0, n as u32 - 1),
            Wanted::TopK(k) => (k, n as u32 - 1),
        };
        self.params_words[..4].copy_from_slice(&[n as u32, n_seqs as u32, k, first_row]);
        self.queue.write_buffer(
            &self.params,
            0,
            bytemuck::cast_slice(&self.params_words[..4 + 4 * n]),
        );
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        let mut dispatches = 0;
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            for (d, bg) in h.gpu.dispatches.iter().zip(&self.bind_groups) {
                let rows = match wanted {
                    Wanted::Nothing if d.logits => continue,
                    _ if d.logits => n as u32 - first_row,
                    _ => n as u32,
                };
                pass.set_pipeline(&self.pipelines[d.kernel as usize]);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(d.groups_x, rows.div_ceil(d.tokens_per_group), 1);
                dispatches += 1;
            }
            if let Wanted::TopK(_) = wanted {
                pass.set_pipeline(&self.pipelines[h.gpu.top_k.kernel as usize]);
                pass.set_bind_group(0, &self.top_k_bind_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
                dispatches += 1;
            }
        }
        let Buf::Arena {
            offset: logits_at, ..
        } = h.logits
        else {
            unreachable!("validated")
        };
        let row_bytes = u64::from(h.model.n_vocab) * 4;
        let bytes = match wanted {
            Wanted::TopK(k) => {
                let bytes = (2 * u64::from(k) + 1) * 4;
                encoder.copy_buffer_to_buffer(&self.candidates, 0, &self.readback, 0, bytes);
                bytes
            }
            Wanted::AllRows | Wanted::LastRow => {
                let from = logits_at + u64::from(first_row) * row_bytes;
                let bytes = (n as u64 - u64::from(first_row)) * row_bytes;
                encoder.copy_buffer_to_buffer(&self.arena, from, &self.readback, 0, bytes);
                bytes
            }
            Wanted::Rows => {
                let mut to = 0;
                for &(first, count) in rows {
                    let from = logits_at + first as u64 * row_bytes;
                    let bytes = count as u64 * row_bytes;
                    encoder.copy_buffer_to_buffer(&self.arena, from, &self.readback, to, bytes);
                    to += bytes;
                }
                to
            }
            Wanted::Nothing => 0,
        };
        self.queue.submit([encoder.finish()]);
        self.last_step = StepStats {
            submits: 1,
            compute_passes: 1,
            dispatches,
            bytes_read_back: bytes,
            encode_nanos: encode_start.elapsed().as_nanos() as u64,
        };
        Ok(bytes)
    }
}

/// What a step must produce of the logits.
#[derive(Clone, Copy)]
enum Wanted {
    AllRows,
    /// Every row computed, some runs of them read back.
    Rows,
    LastRow,
    /// The last row's k best candidates and its log-sum-exp.
    TopK(u32),
    /// None: the step only fills the cache.
    Nothing,
}

/// Maps `slice` for reading, waits for the GPU, and hands the bytes to `copy`.
fn map_and_copy(
    device: &wgpu::Device,
    slice: &wgpu::BufferSlice,
    copy: impl FnOnce(&[u8]),
) -> Result<(), EvalError> {
    slice.map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| EvalError::Device(e.to_string()))?;
    let view = slice
        .get_mapped_range()
        .map_err(|e| EvalError::Device(e.to_string()))?;
    copy(&view);
    Ok(())
}
