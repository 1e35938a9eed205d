//! File formats: bytes in, typed tensors and metadata out. Nothing outside this module knows a
//! file layout.

pub mod dtype;
pub mod gguf;
pub mod llama2c;
pub mod safetensors;
