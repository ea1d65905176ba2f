//! A reader for GGUF files (versions 2 and 3), over a memory map.
//!
//! The file is untrusted input: every count, length, offset and dimension product is checked for
//! overflow and against the bytes actually present before it is used, and every rejection names
//! the byte offset where it happened.

mod cursor;
mod error;
mod value;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use llamart::GgmlType;

use cursor::{initial_capacity, Cursor};
pub use error::GgufError;
pub use value::{Array, Value, ValueType};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Real files nest arrays at most one level; the bound keeps a forged file from exhausting the stack.
const MAX_ARRAY_DEPTH: usize = 4;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Byte size of the data.
    pub bytes: u64,
    /// Where this entry's header starts in the file, for error messages.
    pub header_offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims.iter().product()
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data is not copied: `tensor_data` returns views into the file.
pub struct GgufFile {
    bytes: Bytes,
    pub version: u32,
    pub alignment: u64,
    /// Where the tensor data section starts in the file.
    pub data_offset: u64,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped is outside
        // what any mmap-based reader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Mapped(map))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<GgufFile, GgufError> {
        let header = Header::parse(&bytes)?;
        Ok(GgufFile {
            bytes,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
        })
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, borrowed from the file (bounds were checked when parsing).
    pub fn tensor_data(&self, tensor: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + tensor.offset) as usize;
        &self.bytes[start..start + tensor.bytes as usize]
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
        let mut cur = Cursor::new(bytes);
        let magic = cur
            .take(4, &|| "magic".into())
            .map_err(|_| GgufError::BadMagic {
                found: bytes[..bytes.len().min(4)].to_vec(),
            })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = cur.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                "; this looks like a big-endian GGUF, which is not supported"
            } else if version == 1 {
                "; version 1 files predate 64-bit counts, convert them with a current llama.cpp"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion { version, hint });
        }
        let n_tensors = cur.u64(&|| "tensor count".into())?;
        let n_kv = cur.u64(&|| "metadata count".into())?;
        // Smallest encodings: a key (8-byte length) + type + 1-byte value; a tensor info entry with
        // an empty name and no dimensions.
        cur.check_count(n_kv, 8 + 4 + 1, &|| "metadata count".into())?;
        cur.check_count(n_tensors, 8 + 4 + 4 + 8, &|| "tensor count".into())?;

        let mut metadata = Vec::with_capacity(initial_capacity(n_kv));
        let mut keys = HashSet::new();
        let mut alignment = DEFAULT_ALIGNMENT;
        for i in 0..n_kv {
            let entry_offset = cur.offset();
            let key = cur.string(&|| format!("key of metadata entry {i}"))?;
            let type_offset = cur.offset();
            let type_id = cur.u32(&|| format!("value type of '{key}'"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                offset: type_offset,
                key: key.clone(),
                type_id,
            })?;
            let value_offset = cur.offset();
            let value = read_value(&mut cur, ty, &key, 0)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey {
                    offset: entry_offset,
                    key,
                });
            }
            if key == "general.alignment" {
                alignment = match value {
                    Value::U32(a) if a.is_power_of_two() => a.into(),
                    ref other => {
                        return Err(GgufError::BadAlignment {
                            offset: value_offset,
                            found: other.describe(),
                        })
                    }
                };
            }
            metadata.push((key, value));
        }

        let mut tensors = Vec::with_capacity(initial_capacity(n_tensors));
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let tensor = read_tensor_info(&mut cur, i, alignment)?;
            if !names.insert(tensor.name.clone()) {
                return Err(GgufError::DuplicateTensor {
                    offset: tensor.header_offset,
                    name: tensor.name,
                });
            }
            tensors.push(tensor);
        }

        // The data section starts at the next multiple of the alignment (always representable: the
        // header fits in the file, and alignment is at most 2^31).
        let data_offset = cur.offset().div_ceil(alignment) * alignment;
        check_tensor_extents(&tensors, data_offset, bytes.len() as u64)?;
        Ok(Header {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }
}

fn read_value(
    cur: &mut Cursor,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value, GgufError> {
    let what = || format!("value of '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8(&what)?),
        ValueType::I8 => Value::I8(cur.u8(&what)? as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(&what)?)),
        ValueType::U32 => Value::U32(cur.u32(&what)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(&what)?)),
        ValueType::U64 => Value::U64(cur.u64(&what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(&what)?)),
        ValueType::Bool => Value::Bool(read_bool(cur, key)?),
        ValueType::String => Value::String(cur.string(&what)?),
        ValueType::Array => Value::Array(read_array(cur, key, depth)?),
    })
}

fn read_bool(cur: &mut Cursor, key: &str) -> Result<bool, GgufError> {
    let offset = cur.offset();
    match cur.u8(&|| format!("value of '{key}'"))? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::BadBool {
            offset,
            key: key.into(),
            value,
        }),
    }
}

fn read_array(cur: &mut Cursor, key: &str, depth: usize) -> Result<Array, GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            offset: cur.offset(),
            key: key.into(),
            max_depth: MAX_ARRAY_DEPTH,
        });
    }
    let type_offset = cur.offset();
    let type_id = cur.u32(&|| format!("array element type of '{key}'"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        offset: type_offset,
        key: key.into(),
        type_id,
    })?;
    let len = cur.u64(&|| format!("array length of '{key}'"))?;
    cur.check_count(len, ty.min_encoded_bytes(), &|| format!("array '{key}'"))?;

    fn collect<T>(
        cur: &mut Cursor,
        len: u64,
        mut item: impl FnMut(&mut Cursor) -> Result<T, GgufError>,
    ) -> Result<Vec<T>, GgufError> {
        let mut out = Vec::with_capacity(initial_capacity(len));
        for _ in 0..len {
            out.push(item(cur)?);
        }
        Ok(out)
    }
    macro_rules! fixed {
        ($variant:ident, $t:ty) => {
            Array::$variant(collect(cur, len, |c| {
                Ok(<$t>::from_le_bytes(
                    c.array(&|| format!("element of array '{key}'"))?,
                ))
            })?)
        };
    }
    Ok(match ty {
        ValueType::U8 => fixed!(U8, u8),
        ValueType::I8 => fixed!(I8, i8),
        ValueType::U16 => fixed!(U16, u16),
        ValueType::I16 => fixed!(I16, i16),
        ValueType::U32 => fixed!(U32, u32),
        ValueType::I32 => fixed!(I32, i32),
        ValueType::F32 => fixed!(F32, f32),
        ValueType::U64 => fixed!(U64, u64),
        ValueType::I64 => fixed!(I64, i64),
        ValueType::F64 => fixed!(F64, f64),
        ValueType::Bool => Array::Bool(collect(cur, len, |c| read_bool(c, key))?),
        ValueType::String => Array::String(collect(cur, len, |c| {
            c.string(&|| format!("string in array '{key}'"))
        })?),
        ValueType::Array => Array::Array(collect(cur, len, |c| read_array(c, key, depth + 1))?),
    })
}

fn read_tensor_info(cur: &mut Cursor, index: u64, alignment: u64) -> Result<TensorInfo, GgufError> {
    let header_offset = cur.offset();
    let name = cur.string(&|| format!("name of tensor {index}"))?;
    let n_dims = cur.u32(&|| format!("dimension count of tensor '{name}'"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            offset: header_offset,
            name,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        dims.push(cur.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
    }
    let type_offset = cur.offset();
    let type_id = cur.u32(&|| format!("type of tensor '{name}'"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        offset: type_offset,
        name: name.clone(),
        type_id,
    })?;
    let data_offset_at = cur.offset();
    let offset = cur.u64(&|| format!("data offset of tensor '{name}'"))?;

    // ggml indexes elements with int64_t, so the product must also fit in i64.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| GgufError::ShapeOverflow {
            offset: header_offset,
            name: name.clone(),
            dims: dims.clone(),
        })?;
    let row_len = dims.first().copied().unwrap_or(1);
    if row_len % ty.block_len() as u64 != 0 {
        return Err(GgufError::PartialBlock {
            offset: header_offset,
            name,
            ty: ty.name(),
            row_len,
            block_len: ty.block_len(),
        });
    }
    let bytes = ty
        .bytes_for(n_elements)
        .ok_or_else(|| GgufError::ShapeOverflow {
            offset: header_offset,
            name: name.clone(),
            dims: dims.clone(),
        })?;
    if offset % alignment != 0 {
        return Err(GgufError::MisalignedTensor {
            offset: data_offset_at,
            name,
            data_offset: offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        bytes,
        header_offset,
    })
}

fn check_tensor_extents(
    tensors: &[TensorInfo],
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let mut extents = Vec::with_capacity(tensors.len());
    for t in tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => extents.push((start, end, &t.name)),
            _ => {
                return Err(GgufError::TensorOutOfFile {
                    name: t.name.clone(),
                    start: data_offset.saturating_add(t.offset),
                    end: data_offset.saturating_add(t.offset).saturating_add(t.bytes),
                    file_len,
                })
            }
        }
    }
    extents.sort_unstable();
    for pair in extents.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.0 < a.1 {
            return Err(GgufError::OverlappingTensors {
                first: a.2.clone(),
                second: b.2.clone(),
                offset: b.0,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
