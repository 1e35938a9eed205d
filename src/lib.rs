//! llm-npu: on-device LLM inference with llm.npu-style prefill.
//!
//! The data flow, top to bottom (ARCHITECTURE.md draws it with the files):
//!
//! ```text
//! format (safetensors, GGUF, llama2.c)  tokenizer
//!        \                                /
//!         model: config + family -> Transformer (float reference forward pass, KV cache)
//!                        |
//!         engine: f32  |  npu = quant (int8 weights, calibration)
//!                               -> accel (fixed-shape graphs on an accelerator)
//!                               + shadow (outliers in float on the CPU)
//!                               -> prefill (chunks, subgraph DAG, schedulers, executors)
//!                        |
//!         generate -> sampling
//! ```
//!
//! Beside it: `kernels` (pure math, each SIMD kernel with a portable twin), `measure` (bench,
//! eval, synth, demo, profile), `util` (random numbers and tokens, files beside a model, the
//! progress sink).

pub mod error;
pub mod util;

pub mod format;
pub mod tensor;
pub mod tokenizer;

pub mod model;

pub mod engine;
pub mod quant;
pub mod bitstack;
pub mod accel;
pub mod shadow;
pub mod prefill;

pub mod chat;
pub mod generate;
pub mod sampling;

pub mod kernels;
pub mod measure;
pub mod npy;
pub mod server;

pub use error::{Error, Result};
