//! Tokenizers: HF tokenizer.json, GGUF vocabularies and llama2.c tokenizer.bin behind one type.
//! (Placeholder on main until the tokenizer branch lands.)

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;

pub struct Tokenizer;
pub struct StreamDecoder<'a>(&'a Tokenizer);

impl Tokenizer {
    pub fn from_hf_file(_path: &Path) -> Result<Self> { Err(Error::Tokenizer("not built yet".into())) }
    pub fn from_gguf(_gguf: &GgufFile) -> Result<Self> { Err(Error::Tokenizer("not built yet".into())) }
    pub fn from_llama2c(_path: &Path) -> Result<Self> { Err(Error::Tokenizer("not built yet".into())) }
    pub fn encode(&self, _text: &str, _add_special: bool) -> Result<Vec<u32>> { Ok(vec![]) }
    pub fn decode(&self, _ids: &[u32]) -> Result<String> { Ok(String::new()) }
    pub fn bos_id(&self) -> Option<u32> { None }
    pub fn eos_ids(&self) -> Vec<u32> { vec![] }
    pub fn vocab_size(&self) -> usize { 0 }
    pub fn kind(&self) -> String { String::new() }
    pub fn id_to_piece(&self, _id: u32) -> Option<String> { None }
    pub fn stream(&self) -> StreamDecoder<'_> { StreamDecoder(self) }
}

impl StreamDecoder<'_> {
    pub fn push(&mut self, _id: u32) -> Result<Option<String>> { Ok(None) }
    pub fn finish(&mut self) -> Option<String> { None }
}
