//! llamart: loads llamac execution plans and replays them.
//!
//! The runtime owns the plan format and the numeric kernels; the compiler depends on this crate
//! for both, never the other way round.

pub mod batch;
pub mod bench;
pub mod chat;
pub mod constraint;
pub mod cpu;
pub mod engine;
pub mod eval;
pub mod ggml_type;
pub mod gpu;
pub mod plan;
pub mod quant;
pub mod sampling;
pub mod serve;
pub mod stop;
pub mod tokenizer;

pub use ggml_type::GgmlType;
