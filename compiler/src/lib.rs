//! llamac: compiles GGUF models ahead of time into llamart execution plans.

pub mod gguf;
pub mod inspect;
