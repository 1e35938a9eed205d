//! llm-npu: on-device LLM inference with llm.npu-style prefill.

pub mod accel;
pub mod backend;
pub mod bench;
pub mod calibrate;
pub mod demo;
pub mod error;
pub mod eval;
pub mod format;
pub mod generate;
pub mod tensor;
pub mod kernels;
pub mod model;
pub mod npu;
pub mod npy;
pub mod prefill;
pub mod quant;
pub mod sampling;
pub mod shadow;
pub mod stats;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
