//! Writes GGUF files. The compiler never needs this to compile; tests use it to build synthetic
//! models and malformed inputs without downloading anything.

use llamart::GgmlType;

use super::{Array, Value, DEFAULT_ALIGNMENT};

/// Builds a GGUF (version 3) image in memory.
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    pub fn metadata(&mut self, key: &str, value: Value) -> &mut Self {
        if key == "general.alignment" {
            // An invalid alignment is still written (tests need such files) but not used for layout.
            if let Value::U32(a) = value {
                if a.is_power_of_two() {
                    self.alignment = a.into();
                }
            }
        }
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor; `dims` are in ggml order and `data` must already be encoded as `ty`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }

    /// Adds an f32 tensor from values.
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        self.tensor(
            name,
            dims,
            GgmlType::F32,
            bytemuck::cast_slice(values).to_vec(),
        )
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(super::MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, ty, data) in &self.tensors {
            write_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        let data_start = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(data_start as usize, 0);
        for ((_, _, _, data), offset) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + offset) as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => write_array(out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn write_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&(array.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr, $f:expr) => {
            for x in $v {
                $f(x)
            }
        };
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v, |x: &i8| out.push(*x as u8)),
        Array::U16(v) => each!(v, |x: &u16| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => each!(v, |x: &i16| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => each!(v, |x: &u32| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => each!(v, |x: &i32| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => each!(v, |x: &f32| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => each!(v, |x: &bool| out.push(*x as u8)),
        Array::String(v) => each!(v, |x: &String| write_string(out, x)),
        Array::Array(v) => each!(v, |x: &Array| write_array(out, x)),
        Array::U64(v) => each!(v, |x: &u64| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => each!(v, |x: &i64| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => each!(v, |x: &f64| out.extend_from_slice(&x.to_le_bytes())),
    }
}
