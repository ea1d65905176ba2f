use thiserror::Error;

/// Why a GGUF file was rejected. Every variant that concerns the file's contents names the byte
/// offset where the problem was found.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: expected magic \"GGUF\" at byte 0, found {found:02x?}")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {version} at byte 4 (supported: 2, 3){hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },
    #[error(
        "file truncated at byte {offset}: reading {what} needs {needed} bytes, {available} left"
    )]
    Truncated {
        offset: u64,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("at byte {offset}: {what} claims {count} entries, but the {available} bytes left hold at most {max}")]
    CountTooLarge {
        offset: u64,
        what: String,
        count: u64,
        available: u64,
        max: u64,
    },
    #[error("at byte {offset}: {what} is not valid UTF-8")]
    InvalidUtf8 { offset: u64, what: String },
    #[error("at byte {offset}: unknown metadata value type {type_id} for key '{key}'")]
    UnknownValueType {
        offset: u64,
        key: String,
        type_id: u32,
    },
    #[error("at byte {offset}: boolean value {value} for key '{key}' is neither 0 nor 1")]
    BadBool { offset: u64, key: String, value: u8 },
    #[error("at byte {offset}: arrays nested deeper than {max_depth} levels in key '{key}'")]
    NestingTooDeep {
        offset: u64,
        key: String,
        max_depth: usize,
    },
    #[error("at byte {offset}: duplicate metadata key '{key}'")]
    DuplicateKey { offset: u64, key: String },
    #[error(
        "at byte {offset}: general.alignment must be a power of two of type u32, found {found}"
    )]
    BadAlignment { offset: u64, found: String },
    #[error("at byte {offset}: duplicate tensor name '{name}'")]
    DuplicateTensor { offset: u64, name: String },
    #[error("at byte {offset}: tensor '{name}' has {n_dims} dimensions (at most {max})")]
    TooManyDims {
        offset: u64,
        name: String,
        n_dims: u32,
        max: usize,
    },
    #[error("at byte {offset}: tensor '{name}' has unknown type id {type_id}")]
    UnknownTensorType {
        offset: u64,
        name: String,
        type_id: u32,
    },
    #[error("at byte {offset}: tensor '{name}' has shape {dims:?} whose element count overflows")]
    ShapeOverflow {
        offset: u64,
        name: String,
        dims: Vec<u64>,
    },
    #[error("at byte {offset}: tensor '{name}' of type {ty} has rows of {row_len} elements, not a multiple of the block size {block_len}")]
    PartialBlock {
        offset: u64,
        name: String,
        ty: &'static str,
        row_len: u64,
        block_len: usize,
    },
    #[error("at byte {offset}: tensor '{name}' data offset {data_offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        offset: u64,
        name: String,
        data_offset: u64,
        alignment: u64,
    },
    #[error("tensor '{name}' data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfFile {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensors '{first}' and '{second}' overlap at byte {offset}")]
    OverlappingTensors {
        first: String,
        second: String,
        offset: u64,
    },
}
