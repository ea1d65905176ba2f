//! llamac: compiles GGUF models ahead of time into llamart execution plans.
//!
//! GGUF file -> `lower` (architecture files in models/) -> op graph (`ir`) -> `passes` ->
//! `emit` -> plan file (format owned by llamart).

pub mod compile;
pub mod emit;
pub mod gguf;
pub mod inspect;
pub mod ir;
pub mod lower;
pub mod passes;
pub mod report;
pub mod synthetic;
pub mod tokenizer;
pub mod wgsl;

pub const COMPILER_VERSION: &str = concat!("llamac ", env!("CARGO_PKG_VERSION"));
