//! The GPU form of a plan: every step specialized into WGSL compute kernels from the sources in
//! shaders/, with its dimensions baked in as constants, validated with naga, plus the dispatches
//! and bindings that run them. A weight larger than a storage binding may hold is bound in parts by
//! rows: the lookups and fused products read all its parts in one dispatch, a decoder each; an
//! unfused product runs a dispatch per part.

use std::collections::HashMap;
use std::fmt::Write;

use llamart::plan::{
    Buf, Epilogue, GpuBinding, GpuDispatch, GpuKernel, GpuRequirements, GpuSection, Kernel, KvType,
    Partials, PartialsInto, PlanHeader, UnaryOp,
};
use llamart::GgmlType;
use thiserror::Error;

/// WebGPU's default `maxStorageBufferBindingSize`, also lavapipe's: every binding stays within it.
pub const MAX_BINDING_BYTES: u64 = 128 << 20;
/// Binding offsets are multiples of this (WebGPU's largest `minStorageBufferOffsetAlignment`).
pub const OFFSET_ALIGN: u64 = 256;
const WORKGROUP: u32 = 64;
/// Tokens each matmul invocation handles (`TILE` in shaders/matmul.wgsl).
const MATMUL_TILE: u32 = 8;
/// Tokens each attention workgroup handles (`TILE` in shaders/attention.wgsl): every key and
/// value row read serves this many queries. The kernel holds them as two quads, so it is 8.
const ATTENTION_TILE: u32 = 8;
/// Most candidates the GPU top-k kernel returns.
pub const MAX_TOP_K: u32 = 1024;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("the GPU kernel for step {step} ({label}) does not validate: {why}")]
    Invalid {
        step: usize,
        label: String,
        why: String,
    },
    #[error("step {step}: no GPU kernel reads {ty} weights")]
    UnsupportedType { step: usize, ty: GgmlType },
    #[error("step {step}: the GPU attention takes head dimensions four at a time, and {head_dim} is not a multiple of 4")]
    HeadDim { step: usize, head_dim: u32 },
    #[error("step {step}: {why}")]
    KvCache { step: usize, why: String },
    #[error("step {step}: the fused product over '{name}' ({bytes} bytes) needs its whole weight in one storage binding (compile with --disable-pass for its fusion)")]
    FusedTooLarge {
        step: usize,
        name: String,
        bytes: u64,
    },
    #[error("step {step}: one row of weight '{name}' ({bytes} bytes) exceeds a storage binding")]
    RowTooLarge {
        step: usize,
        name: String,
        bytes: u64,
    },
}

fn shader(name: &str) -> &'static str {
    match name {
        "common" => include_str!("../../shaders/common.wgsl"),
        "embed" => include_str!("../../shaders/embed.wgsl"),
        "rms_norm" => concat!(
            include_str!("../../shaders/reduce.wgsl"),
            include_str!("../../shaders/rms_norm.wgsl")
        ),
        "matmul" => include_str!("../../shaders/matmul.wgsl"),
        "binary_rows" => include_str!("../../shaders/binary_rows.wgsl"),
        "binary_broadcast" => include_str!("../../shaders/binary_broadcast.wgsl"),
        "unary" => concat!(
            include_str!("../../shaders/activation.wgsl"),
            include_str!("../../shaders/unary.wgsl")
        ),
        "rope" => concat!(
            include_str!("../../shaders/rotary.wgsl"),
            include_str!("../../shaders/rope.wgsl")
        ),
        "kv_store" => include_str!("../../shaders/kv_store.wgsl"),
        "kv_store_q8_0" => include_str!("../../shaders/kv/store_q8_0.wgsl"),
        "attention" => concat!(
            include_str!("../../shaders/attention.wgsl"),
            include_str!("../../shaders/attention_store.wgsl")
        ),
        "attention_project" => concat!(
            include_str!("../../shaders/attention.wgsl"),
            include_str!("../../shaders/attention_project.wgsl")
        ),
        "top_k" => include_str!("../../shaders/top_k.wgsl"),
        other => unreachable!("no shader {other}"),
    }
}

/// The WGSL element a cache of type `ty` is bound as.
fn kv_element(ty: KvType) -> &'static str {
    if ty == KvType::F32 {
        "f32"
    } else {
        "u32"
    }
}

/// Declares a layer's cache (K at `k_binding`, V after it) as its element type stores it, and the
/// functions that load and store it (kv/*.wgsl). `HEAD_DIM` and `KV_CTX` (positions per head)
/// must be constants.
fn kv_access(ty: KvType, k_binding: u32) -> String {
    let elem = kv_element(ty);
    let mut src = String::new();
    for (name, binding) in [("k_cache", k_binding), ("v_cache", k_binding + 1)] {
        let _ = writeln!(
            src,
            "@group(0) @binding({binding}) var<storage, read_write> {name}: array<{elem}>;"
        );
    }
    src.push_str(kv_functions(ty));
    src
}

/// The functions that load and store a cache of element type `ty` (no stores for Q8_0, whose
/// rows only `kv_store_q8_0` writes, whole blocks at a time).
fn kv_functions(ty: KvType) -> &'static str {
    match ty {
        KvType::F32 => include_str!("../../shaders/kv/f32.wgsl"),
        KvType::F16 => include_str!("../../shaders/kv/f16.wgsl"),
        KvType::Q8_0 => include_str!("../../shaders/kv/q8_0.wgsl"),
    }
}

/// The decoder of a weight type, if the GPU reads it: the WGSL parts to concatenate.
fn weight_decoder(ty: GgmlType) -> Option<&'static [&'static str]> {
    const K_SCALE_MIN: &str = include_str!("../../shaders/weights/k_scale_min.wgsl");
    Some(match ty {
        GgmlType::F32 => &[include_str!("../../shaders/weights/f32.wgsl")],
        GgmlType::F16 => &[include_str!("../../shaders/weights/f16.wgsl")],
        GgmlType::BF16 => &[include_str!("../../shaders/weights/bf16.wgsl")],
        GgmlType::Q4_0 => &[include_str!("../../shaders/weights/q4_0.wgsl")],
        GgmlType::Q4_1 => &[include_str!("../../shaders/weights/q4_1.wgsl")],
        GgmlType::Q5_0 => &[include_str!("../../shaders/weights/q5_0.wgsl")],
        GgmlType::Q5_1 => &[include_str!("../../shaders/weights/q5_1.wgsl")],
        GgmlType::Q8_0 => &[include_str!("../../shaders/weights/q8_0.wgsl")],
        GgmlType::Q2_K => &[include_str!("../../shaders/weights/q2_k.wgsl")],
        GgmlType::Q3_K => &[include_str!("../../shaders/weights/q3_k.wgsl")],
        GgmlType::Q4_K => &[K_SCALE_MIN, include_str!("../../shaders/weights/q4_k.wgsl")],
        GgmlType::Q5_K => &[K_SCALE_MIN, include_str!("../../shaders/weights/q5_k.wgsl")],
        GgmlType::Q6_K => &[include_str!("../../shaders/weights/q6_k.wgsl")],
        _ => return None,
    })
}

/// Weight types the GPU kernels read.
pub fn gpu_supports(ty: GgmlType) -> bool {
    weight_decoder(ty).is_some()
}

/// A constant baked into a kernel.
#[derive(Clone, Copy)]
enum Const {
    U(u64),
    F(f32),
    B(bool),
}

/// Assembles a kernel: constants, the shared prelude, the weight decoder, the op.
fn module(op: &str, weight: Option<GgmlType>, consts: &[(&str, Const)]) -> String {
    let mut src = prelude(weight, consts);
    src.push_str(shader(op));
    src
}

/// [`module`] for an op that reads or writes a cache of type `ty` at bindings `k_binding` and
/// `k_binding + 1` (`consts` include `HEAD_DIM` and `KV_CTX`).
fn kv_module(
    op: &str,
    weight: Option<GgmlType>,
    consts: &[(&str, Const)],
    ty: KvType,
    k_binding: u32,
) -> String {
    let mut src = prelude(weight, consts);
    src.push_str(&kv_access(ty, k_binding));
    src.push_str(shader(op));
    src
}

/// Constants, the shared prelude and the weight decoder: what every kernel starts with.
fn prelude(weight: Option<GgmlType>, consts: &[(&str, Const)]) -> String {
    let mut src = String::new();
    for (name, value) in consts {
        let _ = match value {
            Const::U(v) => writeln!(src, "const {name}: u32 = {v}u;"),
            Const::F(v) => writeln!(src, "const {name}: f32 = {v:?};"),
            Const::B(v) => writeln!(src, "const {name}: bool = {v};"),
        };
    }
    src.push_str(shader("common"));
    src.push_str(include_str!("../../shaders/half.wgsl"));
    if let Some(ty) = weight {
        src.push_str(include_str!("../../shaders/weights/bytes.wgsl"));
        for part in weight_decoder(ty).expect("checked by the caller") {
            src.push_str(part);
        }
    }
    src
}

/// A run of a weight's rows that one binding holds: first row, rows, binding.
type WeightPart = (u64, u64, GpuBinding);

/// A storage binding of a fused kernel: name, whether the kernel only reads it through a
/// read-only view (weights; arena and cache buffers are bound several times in one dispatch, so
/// they are always read-write), element type.
struct Decl(std::borrow::Cow<'static, str>, bool, &'static str);

impl Decl {
    fn new(
        name: impl Into<std::borrow::Cow<'static, str>>,
        read_only: bool,
        elem: &'static str,
    ) -> Decl {
        Decl(name.into(), read_only, elem)
    }
}

/// The fused matrix product: prologue, epilogue and bindings chosen by the step, assembled around
/// shaders/fused/matmul.wgsl. `weights` are the stacked weights' types and first rows.
fn fused_module(
    weights: &[(GgmlType, u64)],
    consts: &[(&str, Const)],
    decls: &[Decl],
    step: &FusedVariant,
    kv_type: KvType,
) -> String {
    let mut src = prelude(None, consts);
    for (i, Decl(name, read_only, elem)) in decls.iter().enumerate() {
        let access = if *read_only { "read" } else { "read_write" };
        let _ = writeln!(
            src,
            "@group(0) @binding({}) var<storage, {access}> {name}: array<{elem}>;",
            i + 1
        );
    }
    src.push_str(&weight_readers(weights, true));
    let parts_in_input = step.partials == Some(PartialsInto::Input);
    if let Some(post) = step.post_norm {
        src.push_str(if parts_in_input {
            include_str!("../../shaders/fused/y_parts.wgsl")
        } else {
            include_str!("../../shaders/fused/y_operand.wgsl")
        });
        src.push_str(if post.stores_formed {
            "fn store_formed(at: u32, v: f32) {\n    if (first_group) {\n        formed[at] = v;\n    }\n}\n"
        } else {
            "fn store_formed(at: u32, v: f32) {}\n"
        });
        src.push_str(include_str!("../../shaders/fused/input_post_norm.wgsl"));
        src.push_str(include_str!("../../shaders/fused/input_staged.wgsl"));
    } else if step.norm || parts_in_input {
        src.push_str(if parts_in_input {
            include_str!("../../shaders/fused/input_at_x_parts.wgsl")
        } else {
            include_str!("../../shaders/fused/input_at_x.wgsl")
        });
        src.push_str("fn form_input(lid: u32, t0: u32) {}\n");
        src.push_str(include_str!("../../shaders/fused/input_staged.wgsl"));
    } else {
        src.push_str(include_str!("../../shaders/fused/input_direct.wgsl"));
    }
    if step.norm || step.post_norm.is_some() {
        src.push_str(include_str!("../../shaders/reduce.wgsl"));
        src.push_str(include_str!("../../shaders/fused/row_rms.wgsl"));
    }
    if step.epilogue == Epilogue::Add {
        src.push_str(if step.partials == Some(PartialsInto::Residual) {
            include_str!("../../shaders/fused/residual_parts.wgsl")
        } else {
            include_str!("../../shaders/fused/residual_direct.wgsl")
        });
    }
    src.push_str(if step.norm {
        include_str!("../../shaders/fused/prologue_rms_norm.wgsl")
    } else {
        include_str!("../../shaders/fused/prologue_none.wgsl")
    });
    let epilogue_src = match step.epilogue {
        Epilogue::Store => include_str!("../../shaders/fused/epilogue_store.wgsl"),
        Epilogue::Add => include_str!("../../shaders/fused/epilogue_add.wgsl"),
        Epilogue::Glu(_) => concat!(
            include_str!("../../shaders/activation.wgsl"),
            include_str!("../../shaders/fused/epilogue_glu.wgsl")
        ),
        Epilogue::RopeKv { bias, qk_norm, .. } => {
            src.push_str(kv_functions(kv_type));
            src.push_str(if bias {
                "fn bias_at(r: u32) -> f32 {\n    return bias[r];\n}\n"
            } else {
                "fn bias_at(r: u32) -> f32 {\n    return 0.0;\n}\n"
            });
            src.push_str(if qk_norm.is_some() {
                include_str!("../../shaders/fused/head_norm.wgsl")
            } else {
                include_str!("../../shaders/fused/head_norm_none.wgsl")
            });
            concat!(
                include_str!("../../shaders/rotary.wgsl"),
                include_str!("../../shaders/fused/epilogue_rope_kv.wgsl")
            )
        }
    };
    src.push_str(epilogue_src);
    src.push_str(include_str!("../../shaders/fused/matmul.wgsl"));
    src
}

/// What a fused product's kernel is made of, besides its weights and constants.
struct FusedVariant {
    post_norm: Option<PostNormVariant>,
    norm: bool,
    epilogue: Epilogue,
    partials: Option<PartialsInto>,
}

#[derive(Clone, Copy)]
struct PostNormVariant {
    stores_formed: bool,
}

/// The binding of stacked weight `p` of `count`: `wq` alone, else `wq_p`, as [`weight_readers`]
/// names them.
fn weight_binding(p: usize, count: usize) -> String {
    if count == 1 {
        "wq".into()
    } else {
        format!("wq_{p}")
    }
}

/// The row-length constant of stacked weight `p` of `count`.
fn row_bytes_const(p: usize, count: usize) -> String {
    if count == 1 {
        "ROW_BYTES".into()
    } else {
        format!("ROW_BYTES_{p}")
    }
}

/// The index of a weight operand.
fn weight_index(b: &Buf) -> usize {
    match *b {
        Buf::Weight(w) => w as usize,
        Buf::Arena { .. } => unreachable!("a weight operand"),
    }
}

/// The names a weight decoder (shaders/weights/*.wgsl) and `dot_row` define or read, renamed per
/// stacked weight so that several decoders live in one kernel.
const WEIGHT_NAMES: &[&str] = &[
    "wq",
    "ROW_BYTES",
    "weight",
    "wbyte",
    "wf16",
    "wu32",
    "wi8",
    "scale_min_k4",
    "dot_row",
];

/// `dot_row` over the stacked weights: with one, its decoder as it is; with several, each
/// decoder and `dot_row` with its own suffix (`wq_1`, `ROW_BYTES_1`, ...), and a `dot_row` that
/// picks the weight a row lies in. A workgroup's rows lie in one weight except at a boundary, so
/// the branch is almost always uniform.
fn weight_readers(weights: &[(GgmlType, u64)], with_dot_row: bool) -> String {
    let reader = |ty: GgmlType| {
        let mut src = include_str!("../../shaders/weights/bytes.wgsl").to_string();
        for part in weight_decoder(ty).expect("checked by the caller") {
            src.push_str(part);
        }
        if with_dot_row {
            src.push_str(include_str!("../../shaders/fused/dot_row.wgsl"));
        }
        src
    };
    if let [(ty, _)] = weights {
        return reader(*ty);
    }
    let mut src = String::new();
    let (signature, args) = if with_dot_row {
        (
            "dot_row(r: u32, t0: u32, tiles: u32) -> array<f32, TILE>",
            "t0, tiles",
        )
    } else {
        ("weight(r: u32, i: u32) -> f32", "i")
    };
    let name = if with_dot_row { "dot_row" } else { "weight" };
    let mut dispatch = format!("fn {signature} {{\n");
    for (p, &(ty, first)) in weights.iter().enumerate() {
        src.push_str(&with_suffix(&reader(ty), WEIGHT_NAMES, &format!("_{p}")));
        let call = format!("{name}_{p}(r - {first}u, {args})");
        let _ = match weights.get(p + 1) {
            Some(&(_, next)) => writeln!(
                dispatch,
                "    if (r < {next}u) {{\n        return {call};\n    }}"
            ),
            None => writeln!(dispatch, "    return {call};"),
        };
    }
    dispatch.push_str("}\n");
    src + &dispatch
}

/// `src` with every whole identifier of `names` followed by `suffix`.
fn with_suffix(src: &str, names: &[&str], suffix: &str) -> String {
    let mut out = String::with_capacity(src.len() + 256);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(word);
        if names.contains(&word.as_str()) {
            out.push_str(suffix);
        }
        word.clear();
    };
    for c in src.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Parses and validates a kernel with naga.
pub fn validate(wgsl: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| e.emit_to_string(wgsl))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(wgsl))?;
    Ok((module, info))
}

/// Translates a validated kernel to Metal Shading Language, with binding n of group 0 in
/// `[[buffer(n)]]`.
pub fn to_msl(wgsl: &str) -> Result<String, String> {
    use naga::back::msl;
    let (module, info) = validate(wgsl)?;
    let mut resources = msl::EntryPointResources::default();
    for var in module.global_variables.iter().map(|(_, v)| v) {
        if let Some(b) = &var.binding {
            resources.resources.insert(
                *b,
                msl::BindTarget {
                    buffer: Some(b.binding as u8),
                    ..Default::default()
                },
            );
        }
    }
    resources.sizes_buffer = Some(30);
    let mut options = msl::Options {
        lang_version: (2, 4),
        fake_missing_bindings: false,
        ..Default::default()
    };
    options
        .per_entry_point_map
        .insert("main".to_string(), resources);
    let pipeline = msl::PipelineOptions::default();
    let (text, _) =
        msl::write_string(&module, &info, &options, &pipeline).map_err(|e| e.to_string())?;
    Ok(text)
}

struct Emitter<'a> {
    h: &'a PlanHeader,
    max_binding: u64,
    kernels: Vec<GpuKernel>,
    index: HashMap<String, u32>,
    dispatches: Vec<GpuDispatch>,
}

impl Emitter<'_> {
    fn kernel(&mut self, step: usize, label: String, wgsl: String) -> Result<u32, GpuError> {
        // What every kernel's `Params` needs: the plan's batch (its rows' metadata) and page size.
        let wgsl = format!(
            "const MAX_ROWS: u32 = {}u;\nconst PAGE_TOKENS: u32 = {}u;\n{wgsl}",
            self.h.limits.max_batch, self.h.limits.page_tokens
        );
        if let Some(&i) = self.index.get(&wgsl) {
            return Ok(i);
        }
        validate(&wgsl).map_err(|why| GpuError::Invalid {
            step,
            label: label.clone(),
            why,
        })?;
        let i = self.kernels.len() as u32;
        self.index.insert(wgsl.clone(), i);
        self.kernels.push(GpuKernel { label, wgsl });
        Ok(i)
    }

    fn dispatch(
        &mut self,
        step: usize,
        kernel: u32,
        bindings: Vec<GpuBinding>,
        groups_x: u64,
        tokens_per_group: u32,
    ) {
        self.dispatches.push(GpuDispatch {
            step: step as u32,
            kernel,
            bindings,
            groups_x: groups_x as u32,
            tokens_per_group,
            logits: false,
        });
    }

    fn pages(&self) -> GpuBinding {
        GpuBinding::Pages {
            offset: 0,
            size: self.h.limits.gpu_page_table_bytes(),
        }
    }

    fn arena(&self, b: &Buf) -> GpuBinding {
        match *b {
            Buf::Arena { offset, row_bytes } => GpuBinding::Arena {
                offset,
                size: row_bytes * u64::from(self.h.limits.max_batch),
            },
            Buf::Weight(_) => unreachable!("an activation operand"),
        }
    }

    /// The error for step `step`, whose fused kernel needs weight `b` in one binding.
    fn too_large_to_fuse(&self, step: usize, b: &Buf) -> GpuError {
        let Buf::Weight(w) = *b else {
            unreachable!("a weight operand")
        };
        let w = &self.h.weights[w as usize];
        GpuError::FusedTooLarge {
            step,
            name: w.name.clone(),
            bytes: w.bytes,
        }
    }

    fn check_head_dim(&self, step: usize, head_dim: u32) -> Result<(), GpuError> {
        if head_dim.is_multiple_of(4) {
            Ok(())
        } else {
            Err(GpuError::HeadDim { step, head_dim })
        }
    }

    /// The K and V regions of layer `layer`'s cache.
    fn kv_bindings(&self, layer: u32) -> (GpuBinding, GpuBinding) {
        let lay = self.h.kv.layers[layer as usize];
        let size = u64::from(self.h.limits.kv_tokens * lay.n_kv_head)
            * self.h.kv.ty.row_bytes(lay.head_dim as usize) as u64;
        (
            GpuBinding::Kv {
                offset: lay.k_offset,
                size,
            },
            GpuBinding::Kv {
                offset: lay.v_offset,
                size,
            },
        )
    }

    fn whole_weight(&self, b: &Buf) -> GpuBinding {
        let Buf::Weight(index) = *b else {
            unreachable!("a weight operand")
        };
        GpuBinding::Weight {
            index,
            offset: 0,
            size: self.h.weights[index as usize].bytes.div_ceil(4) * 4,
        }
    }

    /// Splits weight `b`'s rows into parts that each fit one binding, at aligned offsets:
    /// (first row, rows, binding).
    fn weight_parts(
        &self,
        step: usize,
        b: &Buf,
    ) -> Result<(GgmlType, u64, Vec<WeightPart>), GpuError> {
        let Buf::Weight(index) = *b else {
            unreachable!("a weight operand")
        };
        let w = &self.h.weights[index as usize];
        if !gpu_supports(w.ty) {
            return Err(GpuError::UnsupportedType { step, ty: w.ty });
        }
        let row_bytes = w.ty.bytes_for(w.dims[0]).expect("checked by the plan");
        let rows = w.dims[1..].iter().product::<u64>();
        // Rows per part: a multiple of the workgroup size whose byte length keeps offsets aligned.
        let align_rows = lcm(
            u64::from(WORKGROUP),
            OFFSET_ALIGN / gcd(row_bytes, OFFSET_ALIGN),
        );
        let per_part = (self.max_binding / row_bytes) / align_rows * align_rows;
        if per_part == 0 {
            return Err(GpuError::RowTooLarge {
                step,
                name: w.name.clone(),
                bytes: row_bytes,
            });
        }
        let mut parts = Vec::new();
        let mut first = 0;
        while first < rows {
            let n = per_part.min(rows - first);
            let size = (n * row_bytes).div_ceil(4) * 4;
            parts.push((
                first,
                n,
                GpuBinding::Weight {
                    index,
                    offset: first * row_bytes,
                    size,
                },
            ));
            first += n;
        }
        Ok((w.ty, row_bytes, parts))
    }

    fn step(&mut self, i: usize) -> Result<(), GpuError> {
        let step = &self.h.steps[i];
        let io = |j: usize| &step.inputs[j];
        let groups = |n: u64| n.div_ceil(u64::from(WORKGROUP));
        let logits = computes_only_logits(self.h, i);
        let first_dispatch = self.dispatches.len();
        match step.kernel {
            Kernel::Embed { n, scale } => {
                // One dispatch reads every binding the table needs, a decoder each.
                let (ty, row_bytes, parts) = self.weight_parts(i, io(0))?;
                let count = parts.len();
                let mut consts = vec![
                    ("N".to_string(), Const::U(n.into())),
                    ("SCALE".to_string(), Const::F(scale)),
                ];
                let mut src = String::new();
                for p in 0..count {
                    consts.push((row_bytes_const(p, count), Const::U(row_bytes)));
                    let binding = if p == 0 { 1 } else { 3 + p };
                    let _ = writeln!(
                        src,
                        "@group(0) @binding({binding}) var<storage, read> {}: array<u32>;",
                        weight_binding(p, count)
                    );
                }
                let readers: Vec<(GgmlType, u64)> =
                    parts.iter().map(|&(row0, _, _)| (ty, row0)).collect();
                src.push_str(&weight_readers(&readers, false));
                src.push_str(shader("embed"));
                let consts: Vec<(&str, Const)> =
                    consts.iter().map(|(name, c)| (name.as_str(), *c)).collect();
                let mut wgsl = prelude(None, &consts);
                wgsl.push_str(&src);
                let k = self.kernel(i, format!("embed_{ty}_n{n}"), wgsl)?;
                let mut bindings = vec![parts[0].2, self.arena(io(1)), self.arena(&step.output)];
                bindings.extend(parts[1..].iter().map(|p| p.2));
                self.dispatch(i, k, bindings, groups(n.into()), 1);
            }
            Kernel::RmsNorm { n, groups: g, eps } => {
                let consts = [
                    ("N", Const::U(n.into())),
                    ("GROUPS", Const::U(g.into())),
                    ("EPS", Const::F(eps)),
                ];
                let k = self.kernel(
                    i,
                    format!("rms_norm_n{n}x{g}"),
                    module("rms_norm", None, &consts),
                )?;
                let bindings = vec![
                    self.whole_weight(io(1)),
                    self.arena(io(0)),
                    self.arena(&step.output),
                ];
                self.dispatch(i, k, bindings, g.into(), 1);
            }
            Kernel::MatMul { k, n } => {
                let (ty, row_bytes, parts) = self.weight_parts(i, io(1))?;
                for (n0, np, binding) in parts {
                    let consts = [
                        ("K", Const::U(k.into())),
                        ("N", Const::U(n.into())),
                        ("N0", Const::U(n0)),
                        ("NP", Const::U(np)),
                        ("ROW_BYTES", Const::U(row_bytes)),
                        ("FROM_FIRST_ROW", Const::B(logits)),
                    ];
                    let kern = self.kernel(
                        i,
                        format!("matmul_{ty}_k{k}_n{n}"),
                        module("matmul", Some(ty), &consts),
                    )?;
                    let bindings = vec![binding, self.arena(io(0)), self.arena(&step.output)];
                    self.dispatch(i, kern, bindings, groups(np), MATMUL_TILE);
                }
            }
            Kernel::FusedMatMul {
                k,
                n,
                weights: _,
                post_norm,
                norm,
                epilogue,
                partials,
            } => {
                let layout = step.kernel.fused_inputs().expect("a fused product");
                // Every stacked weight, each in as many bindings as it needs, read by one
                // dispatch: a decoder per binding, the first row each starts at.
                let mut stacked = Vec::new();
                let mut weight_bindings = Vec::new();
                let mut first_row = 0;
                for j in layout.weights.clone() {
                    let (ty, row_bytes, parts) = self.weight_parts(i, io(j))?;
                    for (row0, _, binding) in parts {
                        stacked.push((ty, first_row + row0, row_bytes));
                        weight_bindings.push(binding);
                    }
                    first_row += self.h.weights[weight_index(io(j))].dims[1];
                }
                let mut decls = vec![
                    Decl::new(weight_binding(0, stacked.len()), true, "u32"),
                    Decl::new("x", false, "f32"),
                    Decl::new("y", false, "f32"),
                ];
                let mut extra = Vec::new();
                let tile = fused_tile(k, norm.is_some() || post_norm.is_some(), partials);
                let mut consts = vec![
                    ("K".to_string(), Const::U(k.into())),
                    ("N".to_string(), Const::U(n.into())),
                    ("EPS".to_string(), Const::F(norm.unwrap_or(0.0))),
                    ("POST_EPS".to_string(), Const::F(post_norm.unwrap_or(0.0))),
                    ("TILE".to_string(), Const::U(tile.into())),
                    ("STAGED".to_string(), Const::U(u64::from(tile * k))),
                    (
                        "PARTS".to_string(),
                        Const::U(partials.map_or(0, |p| p.count).into()),
                    ),
                ];
                for (p, &(_, _, row_bytes)) in stacked.iter().enumerate() {
                    consts.push((row_bytes_const(p, stacked.len()), Const::U(row_bytes)));
                }
                for (p, binding) in weight_bindings.iter().enumerate().skip(1) {
                    decls.push(Decl::new(weight_binding(p, stacked.len()), true, "u32"));
                    extra.push(*binding);
                }
                if let Some(j) = layout.post_y {
                    decls.push(Decl::new("post_y", false, "f32"));
                    extra.push(self.arena(io(j)));
                }
                if let Some(j) = layout.post_weight {
                    decls.push(Decl::new("post_w", true, "f32"));
                    extra.push(self.whole_weight(io(j)));
                }
                if let Some(j) = layout.norm_weight {
                    decls.push(Decl::new("norm_w", true, "f32"));
                    extra.push(self.whole_weight(io(j)));
                }
                if let Some(formed) = &step.formed {
                    decls.push(Decl::new("formed", false, "f32"));
                    extra.push(self.arena(formed));
                }
                let label = match epilogue {
                    Epilogue::Store => "store".to_string(),
                    Epilogue::Add => {
                        decls.push(Decl::new("residual", false, "f32"));
                        extra.push(self.arena(io(layout.epilogue.expect("with Add"))));
                        "add".to_string()
                    }
                    Epilogue::Glu(op) => {
                        let code = match op {
                            UnaryOp::Silu => 0,
                            UnaryOp::GeluTanh => 1,
                        };
                        consts.push(("ACT".to_string(), Const::U(code)));
                        format!("glu{code}")
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
                        if bias {
                            decls.push(Decl::new("bias", true, "f32"));
                            extra.push(self.whole_weight(io(layout.epilogue.expect("bias"))));
                        }
                        let kv_type = self.h.kv.ty;
                        if kv_type == KvType::Q8_0 {
                            return Err(GpuError::KvCache {
                                step: i,
                                why: "the fused QKV product stores keys and values pair by \
                                      pair, which a q8_0 cache cannot take"
                                    .into(),
                            });
                        }
                        if !n_rot.is_multiple_of(4) || !head_dim.is_multiple_of(4) {
                            return Err(GpuError::KvCache {
                                step: i,
                                why: format!(
                                    "the fused QKV product stores neighbouring pairs of rotary \
                                     dimensions and needs a multiple of 4, not {n_rot} of {head_dim}"
                                ),
                            });
                        }
                        if let Some(j) = layout.qk_norm {
                            if !head_norm_fits(head_dim) {
                                return Err(GpuError::KvCache {
                                    step: i,
                                    why: format!(
                                        "the fused QKV product normalizes heads within a \
                                         workgroup, which heads of {head_dim} do not fit"
                                    ),
                                });
                            }
                            decls.push(Decl::new("q_norm_w", true, "f32"));
                            decls.push(Decl::new("k_norm_w", true, "f32"));
                            extra.push(self.whole_weight(io(j)));
                            extra.push(self.whole_weight(io(j + 1)));
                        }
                        let (kc, vc) = self.kv_bindings(layer);
                        decls.push(Decl::new("k_cache", false, kv_element(kv_type)));
                        decls.push(Decl::new("v_cache", false, kv_element(kv_type)));
                        extra.extend([kc, vc]);
                        consts.extend(
                            [
                                ("N_HEAD", Const::U(n_head.into())),
                                ("N_KV_HEAD", Const::U(n_kv_head.into())),
                                ("HEAD_DIM", Const::U(head_dim.into())),
                                ("N_ROT", Const::U(n_rot.into())),
                                ("BASE", Const::F(base)),
                                ("NEOX", Const::B(neox)),
                                ("KV_CTX", Const::U(self.h.limits.kv_tokens.into())),
                                ("QK_EPS", Const::F(qk_norm.unwrap_or(0.0))),
                            ]
                            .map(|(name, c)| (name.to_string(), c)),
                        );
                        let normed = if qk_norm.is_some() { "_normed" } else { "" };
                        format!("rope_kv{normed}_{n_head}x{head_dim}_{kv_type}")
                    }
                };
                if let Some(j) = layout.parts {
                    decls.push(Decl::new("parts", false, "f32"));
                    extra.push(self.arena(io(j)));
                }
                let prologue_label = match (partials.map(|p| p.into), post_norm, norm) {
                    (Some(PartialsInto::Input), Some(_), _) => "parts_post_norm_",
                    (_, Some(_), _) => "post_norm_",
                    (Some(PartialsInto::Input), None, Some(_)) => "parts_rms_norm_",
                    (Some(PartialsInto::Input), None, None) => "parts_",
                    (_, None, Some(_)) => "rms_norm_",
                    (_, None, None) => "",
                };
                let prologue_label = format!(
                    "{prologue_label}{}{}",
                    if post_norm.is_some() && norm.is_some() {
                        "rms_norm_"
                    } else {
                        ""
                    },
                    if step.formed.is_some() { "formed_" } else { "" }
                );
                let label = match partials.map(|p| p.into) {
                    Some(PartialsInto::Residual) => format!("{label}_parts"),
                    _ => label,
                };
                let mut types: Vec<String> = Vec::new();
                for (ty, _, _) in &stacked {
                    if types.last() != Some(&ty.to_string()) {
                        types.push(ty.to_string());
                    }
                }
                let variant = FusedVariant {
                    post_norm: post_norm.map(|_| PostNormVariant {
                        stores_formed: step.formed.is_some(),
                    }),
                    norm: norm.is_some(),
                    epilogue,
                    partials: partials.map(|p| p.into),
                };
                let items = match epilogue {
                    Epilogue::Store | Epilogue::Add => u64::from(n),
                    Epilogue::Glu(_) => u64::from(n / 2),
                    Epilogue::RopeKv { .. } => u64::from(n / 4),
                };
                consts.extend([
                    ("N0".to_string(), Const::U(0)),
                    ("ITEMS".to_string(), Const::U(items)),
                    ("FROM_FIRST_ROW".to_string(), Const::B(logits)),
                ]);
                let consts: Vec<(&str, Const)> =
                    consts.iter().map(|(name, c)| (name.as_str(), *c)).collect();
                let readers: Vec<(GgmlType, u64)> =
                    stacked.iter().map(|&(ty, first, _)| (ty, first)).collect();
                let kern = self.kernel(
                    i,
                    format!(
                        "{prologue_label}matmul_{label}_{}_k{k}_n{n}",
                        types.join("+")
                    ),
                    fused_module(&readers, &consts, &decls, &variant, self.h.kv.ty),
                )?;
                let mut bindings = vec![
                    weight_bindings[0],
                    self.arena(io(0)),
                    self.arena(&step.output),
                ];
                bindings.extend(extra.iter().copied());
                self.dispatch(i, kern, bindings, groups(items), tile);
            }
            Kernel::AttentionProject {
                layer,
                n_head,
                n_kv_head,
                head_dim,
                scale,
                window,
                n,
            } => {
                self.check_head_dim(i, head_dim)?;
                let (ty, row_bytes, parts) = self.weight_parts(i, io(1))?;
                let [(_, _, w_o)] = parts[..] else {
                    return Err(self.too_large_to_fuse(i, io(1)));
                };
                let (kc, vc) = self.kv_bindings(layer);
                let consts = [
                    ("N_HEAD", Const::U(n_head.into())),
                    ("N_KV_HEAD", Const::U(n_kv_head.into())),
                    ("HEAD_DIM", Const::U(head_dim.into())),
                    ("SCALE", Const::F(scale)),
                    ("WINDOW", Const::U(window.unwrap_or(0).into())),
                    ("TILE", Const::U(ATTENTION_TILE.into())),
                    ("N", Const::U(n.into())),
                    ("ROW_BYTES", Const::U(row_bytes)),
                    ("KV_CTX", Const::U(self.h.limits.kv_tokens.into())),
                ];
                let kv_type = self.h.kv.ty;
                let k = self.kernel(
                    i,
                    format!("attention_project_{ty}_{n_head}x{head_dim}_n{n}_{kv_type}"),
                    kv_module("attention_project", Some(ty), &consts, kv_type, 2),
                )?;
                self.dispatch(
                    i,
                    k,
                    vec![
                        self.arena(io(0)),
                        kc,
                        vc,
                        self.arena(&step.output),
                        w_o,
                        self.pages(),
                    ],
                    n_head.into(),
                    ATTENTION_TILE,
                );
            }
            Kernel::Add { n, broadcast } | Kernel::Mul { n, broadcast } => {
                let op = u64::from(matches!(step.kernel, Kernel::Mul { .. }));
                let consts = [("N", Const::U(n.into())), ("OP", Const::U(op))];
                let (file, b) = if broadcast {
                    ("binary_broadcast", self.whole_weight(io(1)))
                } else {
                    ("binary_rows", self.arena(io(1)))
                };
                let k = self.kernel(
                    i,
                    format!("{file}_op{op}_n{n}"),
                    module(file, None, &consts),
                )?;
                let bindings = vec![self.arena(io(0)), b, self.arena(&step.output)];
                self.dispatch(i, k, bindings, groups(n.into()), 1);
            }
            Kernel::Scale { n, factor } => {
                let consts = [
                    ("N", Const::U(n.into())),
                    ("OP", Const::U(2)),
                    ("FACTOR", Const::F(factor)),
                ];
                let k = self.kernel(i, format!("scale_n{n}"), module("unary", None, &consts))?;
                self.dispatch(
                    i,
                    k,
                    vec![self.arena(io(0)), self.arena(&step.output)],
                    groups(n.into()),
                    1,
                );
            }
            Kernel::Unary { n, op } => {
                let code = match op {
                    UnaryOp::Silu => 0,
                    UnaryOp::GeluTanh => 1,
                };
                let consts = [
                    ("N", Const::U(n.into())),
                    ("OP", Const::U(code)),
                    ("FACTOR", Const::F(0.0)),
                ];
                let k = self.kernel(
                    i,
                    format!("unary{code}_n{n}"),
                    module("unary", None, &consts),
                )?;
                self.dispatch(
                    i,
                    k,
                    vec![self.arena(io(0)), self.arena(&step.output)],
                    groups(n.into()),
                    1,
                );
            }
            Kernel::Rope {
                n_head,
                head_dim,
                n_rot,
                base,
                neox,
            } => {
                let consts = [
                    ("N_HEAD", Const::U(n_head.into())),
                    ("HEAD_DIM", Const::U(head_dim.into())),
                    ("N_ROT", Const::U(n_rot.into())),
                    ("BASE", Const::F(base)),
                    ("NEOX", Const::B(neox)),
                ];
                let k = self.kernel(
                    i,
                    format!("rope_{n_head}x{head_dim}"),
                    module("rope", None, &consts),
                )?;
                self.dispatch(
                    i,
                    k,
                    vec![self.arena(io(0)), self.arena(&step.output)],
                    groups(u64::from(n_head * head_dim)),
                    1,
                );
            }
            Kernel::Attention {
                layer,
                n_head,
                n_kv_head,
                head_dim,
                scale,
                window,
                append,
            } => {
                self.check_head_dim(i, head_dim)?;
                let (kc, vc) = self.kv_bindings(layer);
                let kv_type = self.h.kv.ty;
                let row = u64::from(n_kv_head * head_dim);
                if append {
                    let consts = [
                        ("KV_ROW", Const::U(row)),
                        ("HEAD_DIM", Const::U(head_dim.into())),
                        ("KV_CTX", Const::U(self.h.limits.kv_tokens.into())),
                    ];
                    // An item per pair of blocks (Q8_0) or of values.
                    let (op, items) = if kv_type == KvType::Q8_0 {
                        ("kv_store_q8_0", row / 64)
                    } else {
                        ("kv_store", row / 2)
                    };
                    let src = kv_module(op, None, &consts, kv_type, 3);
                    let store = self.kernel(i, format!("kv_store_{row}_{kv_type}"), src)?;
                    self.dispatch(
                        i,
                        store,
                        vec![self.arena(io(1)), self.arena(io(2)), kc, vc],
                        groups(items),
                        1,
                    );
                }
                let consts = [
                    ("N_HEAD", Const::U(n_head.into())),
                    ("N_KV_HEAD", Const::U(n_kv_head.into())),
                    ("HEAD_DIM", Const::U(head_dim.into())),
                    ("SCALE", Const::F(scale)),
                    ("WINDOW", Const::U(window.unwrap_or(0).into())),
                    ("TILE", Const::U(ATTENTION_TILE.into())),
                    ("KV_CTX", Const::U(self.h.limits.kv_tokens.into())),
                ];
                let k = self.kernel(
                    i,
                    format!("attention_{n_head}x{head_dim}_{kv_type}"),
                    kv_module("attention", None, &consts, kv_type, 2),
                )?;
                self.dispatch(
                    i,
                    k,
                    vec![
                        self.arena(io(0)),
                        kc,
                        vc,
                        self.arena(&step.output),
                        self.pages(),
                    ],
                    n_head.into(),
                    ATTENTION_TILE,
                );
            }
        }
        if logits {
            for d in &mut self.dispatches[first_dispatch..] {
                d.logits = true;
            }
        }
        Ok(())
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

/// Most values a fused product stages in workgroup memory (x plus its parts, for the tile's
/// tokens): 12 KiB, leaving room for the norm's reductions under WebGPU's 16 KiB.
pub const MAX_STAGED_VALUES: u32 = 3072;

/// Whether the fused QKV product's GPU epilogue can normalize heads of `head_dim` values: each
/// invocation holds four values of a head, and a head's invocations must share a workgroup.
pub fn head_norm_fits(head_dim: u32) -> bool {
    head_dim.is_multiple_of(4) && (WORKGROUP * 4).is_multiple_of(head_dim)
}

/// Whether a fused product stages its input in workgroup memory: when a prologue works on it.
fn stages_input(norm: bool, partials: Option<Partials>) -> bool {
    norm || partials.is_some_and(|p| p.into == PartialsInto::Input)
}

/// Tokens per workgroup of a fused product: those whose staged inputs fit, when it stages them.
fn fused_tile(k: u32, norm: bool, partials: Option<Partials>) -> u32 {
    if stages_input(norm, partials) {
        (MAX_STAGED_VALUES / k).clamp(1, MATMUL_TILE)
    } else {
        MATMUL_TILE
    }
}

/// Workgroup memory a step's kernel uses, bytes.
fn workgroup_bytes(kernel: &Kernel) -> u32 {
    match *kernel {
        Kernel::FusedMatMul {
            k,
            norm,
            post_norm,
            partials,
            epilogue,
            ..
        } => {
            let prologue = norm.is_some() || post_norm.is_some();
            let tile = fused_tile(k, prologue, partials);
            let staged = if stages_input(prologue, partials) {
                tile * k
            } else {
                0
            };
            let head_norms = match epilogue {
                Epilogue::RopeKv {
                    qk_norm: Some(_), ..
                } => WORKGROUP * tile,
                _ => 0,
            };
            // The staged rows, the reduction's partial sums, two per-token factors.
            (staged + 64 + 2 * tile + head_norms) * 4
        }
        Kernel::Attention { head_dim, .. } | Kernel::AttentionProject { head_dim, .. } => {
            // Query then output rows, one block's scores, three values per token.
            ATTENTION_TILE * (head_dim + WORKGROUP + 3) * 4
        }
        _ => 64 * 4,
    }
}

/// The top-k kernel's output: ids, logits and the log-sum-exp.
pub fn candidates_bytes() -> u64 {
    (2 * u64::from(MAX_TOP_K) + 1) * 4
}

/// Whether step `i` is a row-wise product whose output is the logits and nothing else: then its
/// dispatches can start at the first wanted row, or be skipped when no logits are wanted.
fn computes_only_logits(h: &PlanHeader, i: usize) -> bool {
    let step = &h.steps[i];
    i + 1 == h.steps.len()
        && step.output == h.logits
        && match step.kernel {
            Kernel::MatMul { .. } => true,
            Kernel::FusedMatMul { epilogue, .. } => {
                matches!(epilogue, Epilogue::Store | Epilogue::Add)
            }
            _ => false,
        }
}

/// The GPU form of the plan's steps.
pub fn gpu_section(h: &PlanHeader) -> Result<GpuSection, GpuError> {
    gpu_section_with_max_binding(h, MAX_BINDING_BYTES)
}

/// `gpu_section` for a device whose storage bindings hold at most `max_binding` bytes (tests use
/// small values to exercise the splitting of weights).
pub fn gpu_section_with_max_binding(
    h: &PlanHeader,
    max_binding: u64,
) -> Result<GpuSection, GpuError> {
    let mut e = Emitter {
        h,
        max_binding,
        kernels: Vec::new(),
        index: HashMap::new(),
        dispatches: Vec::new(),
    };
    for i in 0..h.steps.len() {
        e.step(i)?;
    }
    let consts = [
        ("N_VOCAB", Const::U(h.model.n_vocab.into())),
        ("MAX_K", Const::U(MAX_TOP_K.into())),
    ];
    let top_k_kernel = e.kernel(
        h.steps.len(),
        format!("top_k_{}", h.model.n_vocab),
        module("top_k", None, &consts),
    )?;
    let top_k = GpuDispatch {
        step: h.steps.len() as u32,
        kernel: top_k_kernel,
        bindings: vec![
            e.arena(&h.logits),
            GpuBinding::Candidates {
                offset: 0,
                size: candidates_bytes(),
            },
        ],
        groups_x: 1,
        tokens_per_group: u32::MAX,
        logits: false,
    };
    let binding_bytes = e
        .dispatches
        .iter()
        .flat_map(|d| &d.bindings)
        .map(|b| match *b {
            GpuBinding::Weight { size, .. }
            | GpuBinding::Arena { size, .. }
            | GpuBinding::Kv { size, .. }
            | GpuBinding::Candidates { size, .. }
            | GpuBinding::Pages { size, .. } => size,
        })
        .max()
        .unwrap_or(0);
    let weights: u64 = h.weights.iter().map(|w| w.bytes.div_ceil(4) * 4).sum();
    let logits_bytes = u64::from(h.limits.max_batch) * u64::from(h.model.n_vocab) * 4;
    let max_buffer = [h.arena.bytes, h.kv.bytes]
        .into_iter()
        .chain(h.weights.iter().map(|w| w.bytes))
        .max()
        .unwrap_or(0);
    Ok(GpuSection {
        requirements: GpuRequirements {
            features: Vec::new(),
            max_storage_binding_bytes: binding_bytes,
            max_buffer_bytes: max_buffer,
            max_workgroups_per_dimension: e
                .dispatches
                .iter()
                .map(|d| d.groups_x)
                .max()
                .unwrap_or(1)
                .max(h.limits.max_batch),
            // The top-k kernel: 256 invocations, two arrays of 256 words.
            workgroup_size: 256,
            workgroup_storage_bytes: h
                .steps
                .iter()
                .map(|s| workgroup_bytes(&s.kernel))
                .max()
                .unwrap_or(0)
                .max(2 * 256 * 4),
            storage_buffers_per_stage: e
                .dispatches
                .iter()
                .map(|d| d.bindings.len() as u32)
                .max()
                .unwrap_or(0),
            offset_alignment: OFFSET_ALIGN,
            uniform_binding_bytes: h.limits.gpu_params_bytes(),
        },
        memory_bytes: weights
            + h.arena.bytes
            + h.kv.bytes
            + h.limits.gpu_params_bytes()
            + h.limits.gpu_page_table_bytes()
            + logits_bytes
            + candidates_bytes(),
        top_k,
        max_top_k: MAX_TOP_K,
        kernels: e.kernels,
        dispatches: e.dispatches,
    })
}
