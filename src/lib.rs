//! llm-npu: on-device LLM inference with llm.npu-style prefill.

pub mod error;
pub mod format;
pub mod generate;
pub mod tensor;
pub mod kernels;
pub mod model;
pub mod npy;
pub mod sampling;
pub mod tokenizer;

pub use error::{Error, Result};
