//! llamart: loads llamac execution plans and replays them.
//!
//! The runtime owns the plan format and the numeric kernels; the compiler depends on this crate
//! for both, never the other way round.

pub mod ggml_type;
pub mod quant;

pub use ggml_type::GgmlType;
