//! llm-npu: on-device LLM inference with llm.npu-style prefill.

pub mod bench;
pub mod demo;
pub mod error;
pub mod eval;
pub mod format;
pub mod generate;
pub mod tensor;
pub mod kernels;
pub mod model;
pub mod npy;
pub mod prefill;
pub mod sampling;
pub mod stats;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
