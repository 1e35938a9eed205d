//! Tokenizers: HF tokenizer.json, GGUF vocabularies and llama2.c tokenizer.bin behind one type.
//!
//! - `hf`: tokenizer.json through the `tokenizers` crate.
//! - `spm`: llama.cpp's SentencePiece merger, used for GGUF "llama" vocabularies and llama2.c.
//! - `bpe_gguf`: GGUF "gpt2" byte-level BPE with llama.cpp's per-model pre-tokenizer regexes.
//! - `vocab`: vocabulary, token types and special-token handling shared by the GGUF/llama2.c paths.
//!
//! Decoding skips special (control/unknown) tokens like HF's `decode(skip_special_tokens=True)`;
//! for SPM vocabularies the dummy-prefix space in front of the first word is removed.

mod bpe_gguf;
mod hf;
mod llama2c;
mod spm;
mod vocab;

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;

/// Token-to-bytes view of the tokenizers whose decoding is a plain concatenation of token bytes.
trait PieceBytes: Sync {
    /// Appends the bytes `id` decodes to (nothing for skipped tokens); out-of-range ids are an error.
    fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()>;
    /// Whether one space at the very start of the output is the encoder's dummy prefix.
    fn strips_leading_space(&self) -> bool;
}

impl PieceBytes for spm::SpmTokenizer {
    fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        spm::SpmTokenizer::append_piece(self, id, out)
    }
    fn strips_leading_space(&self) -> bool {
        spm::SpmTokenizer::strips_leading_space(self)
    }
}

impl PieceBytes for bpe_gguf::BpeTokenizer {
    fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        bpe_gguf::BpeTokenizer::append_piece(self, id, out)
    }
    fn strips_leading_space(&self) -> bool {
        false
    }
}

enum Backend {
    Hf(hf::HfTokenizer),
    Spm(spm::SpmTokenizer),
    Bpe(bpe_gguf::BpeTokenizer),
}

pub struct Tokenizer {
    backend: Backend,
    kind: String,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<StreamDecoder<'static>>();
};

impl Tokenizer {
    /// A Hugging Face tokenizer.json; BOS/EOS also come from tokenizer_config.json,
    /// generation_config.json and config.json in the same folder when present.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let hf = hf::HfTokenizer::load(path)?;
        let kind = format!("Hugging Face tokenizer.json ({}, {} tokens)", hf.model_type, hf.vocab_size);
        Ok(Tokenizer { backend: Backend::Hf(hf), kind })
    }

    /// The `tokenizer.ggml.*` metadata of a GGUF file: model "llama" (SPM) or "gpt2" (byte-level BPE).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        const MODEL: &str = "tokenizer.ggml.model";
        let model = vocab::gguf_str(gguf, MODEL)?.ok_or_else(|| Error::field(&gguf.path, MODEL, "missing"))?;
        let (backend, kind) = match model {
            "llama" => {
                let t = spm::SpmTokenizer::from_gguf(gguf)?;
                let kind = format!("GGUF llama/SPM ({} tokens)", t.vocab.len());
                (Backend::Spm(t), kind)
            }
            "gpt2" => {
                let t = bpe_gguf::BpeTokenizer::from_gguf(gguf)?;
                let kind = format!("GGUF gpt2/byte-level BPE, pre-tokenizer {} ({} tokens)", t.pre, t.vocab.len());
                (Backend::Bpe(t), kind)
            }
            other => {
                return Err(Error::field(&gguf.path, MODEL, format!("unsupported tokenizer model '{other}' (supported: llama, gpt2)")))
            }
        };
        Ok(Tokenizer { backend, kind })
    }

    /// A llama2.c tokenizer.bin.
    pub fn from_llama2c(path: &Path) -> Result<Self> {
        let t = llama2c::load(path)?;
        let kind = format!("llama2.c tokenizer.bin ({} tokens)", t.vocab.len());
        Ok(Tokenizer { backend: Backend::Spm(t), kind })
    }

    /// Token ids of `text`. With `add_special`, BOS/EOS are added the way the source format says
    /// (HF post-processor; GGUF add_bos_token/add_eos_token; llama2.c: BOS). Special tokens
    /// written in the text (e.g. `<|im_start|>`) become their ids, except for llama2.c.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf(t) => t.encode(text, add_special),
            Backend::Spm(t) => t.encode(text, add_special),
            Backend::Bpe(t) => t.encode(text, add_special),
        }
    }

    /// Text of `ids`, skipping special tokens. Ids outside the vocabulary are an `Error::Input`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Backend::Hf(t) = &self.backend {
            return t.decode(ids);
        }
        // Same code path as streaming, so the two cannot disagree.
        let mut stream = self.stream();
        let mut text = String::new();
        for &id in ids {
            text.extend(stream.push(id)?);
        }
        text.extend(stream.finish());
        Ok(text)
    }

    pub fn bos_id(&self) -> Option<u32> {
        match &self.backend {
            Backend::Hf(t) => t.bos,
            Backend::Spm(t) => t.vocab.bos,
            Backend::Bpe(t) => t.vocab.bos,
        }
    }

    /// Every id that ends generation: EOS first, then EOT-style tokens (`<|im_end|>`, `<|eot_id|>`,
    /// `<|end|>`, ...) the vocabulary has.
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.backend {
            Backend::Hf(t) => t.eog.clone(),
            Backend::Spm(t) => t.vocab.eog.clone(),
            Backend::Bpe(t) => t.vocab.eog.clone(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(t) => t.vocab_size,
            Backend::Spm(t) => t.vocab.len(),
            Backend::Bpe(t) => t.vocab.len(),
        }
    }

    pub fn kind(&self) -> String {
        self.kind.clone()
    }

    /// The vocabulary's own string for `id` (with `▁`, `Ġ`, `<0x0A>` spellings), for inspection.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf(t) => t.tok.id_to_token(id),
            Backend::Spm(t) => t.vocab.text(id).map(str::to_owned),
            Backend::Bpe(t) => t.vocab.text(id).map(str::to_owned),
        }
    }

    /// Incremental detokenizer whose chunks concatenate to `decode` of all pushed ids. To continue
    /// a prompt's text (keeping the space before the first generated word), push the prompt ids
    /// first and ignore what they return.
    pub fn stream(&self) -> StreamDecoder<'_> {
        let state = match &self.backend {
            Backend::Hf(hf) => State::Text { hf, context: Vec::new(), context_text: String::new(), pending: Vec::new() },
            Backend::Spm(t) => State::Bytes { src: t, pending: Vec::new(), started: false },
            Backend::Bpe(t) => State::Bytes { src: t, pending: Vec::new(), started: false },
        };
        StreamDecoder { state }
    }
}

enum State<'a> {
    /// Token bytes are concatenated; an incomplete UTF-8 tail waits for the next token.
    Bytes { src: &'a dyn PieceBytes, pending: Vec<u8>, started: bool },
    /// HF decoders work on whole sequences: decode the last emitted tokens (as context, so e.g.
    /// a Strip decoder does not eat the next word's space) plus the pending ones, and emit what
    /// the text grew by once it does not end in U+FFFD (an incomplete character) and no run of
    /// ByteFallback byte tokens is still open.
    Text { hf: &'a hf::HfTokenizer, context: Vec<u32>, context_text: String, pending: Vec<u32> },
}

pub struct StreamDecoder<'a> {
    state: State<'a>,
}

/// Moves the complete UTF-8 prefix of `pending` out, with invalid sequences as U+FFFD exactly as
/// `String::from_utf8_lossy` would replace them; an incomplete trailing sequence stays.
fn take_utf8(pending: &mut Vec<u8>) -> Option<String> {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(s) => {
                out.push_str(s);
                pending.clear();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&pending[..valid]));
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        pending.drain(..valid + n);
                    }
                    None => {
                        pending.drain(..valid);
                        break;
                    }
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn decode_joined(hf: &hf::HfTokenizer, a: &[u32], b: &[u32]) -> Result<String> {
    let ids: Vec<u32> = a.iter().chain(b).copied().collect();
    hf.decode(&ids)
}

impl StreamDecoder<'_> {
    /// Feed one generated token; returns text that is now final, never broken UTF-8. Byte-fallback
    /// pieces and partial byte-level BPE bytes are held until they form complete characters.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        match &mut self.state {
            State::Bytes { src, pending, started } => {
                let before = pending.len();
                src.append_piece(id, pending)?;
                if !*started && pending.len() > before {
                    *started = true;
                    if src.strips_leading_space() && pending.first() == Some(&b' ') {
                        pending.remove(0);
                    }
                }
                Ok(take_utf8(pending))
            }
            State::Text { hf, context, context_text, pending } => {
                if id as usize >= hf.vocab_size {
                    return Err(Error::Input(format!("token id {id} is out of range (vocabulary has {} tokens)", hf.vocab_size)));
                }
                if hf.special.contains(&id) {
                    return Ok(None); // decode drops it wherever it is
                }
                pending.push(id);
                if hf.byte_pieces.contains(&id) {
                    return Ok(None);
                }
                let text = decode_joined(hf, context, pending)?;
                if text.len() > context_text.len() && !text.ends_with(char::REPLACEMENT_CHARACTER) {
                    let Some(new) = text.strip_prefix(context_text.as_str()) else {
                        return Err(Error::Tokenizer(format!(
                            "streaming decode: {context_text:?} is not a prefix of {text:?} (token {id})"
                        )));
                    };
                    let new = new.to_owned();
                    *context = std::mem::take(pending);
                    *context_text = hf.decode(context)?;
                    return Ok(Some(new));
                }
                // Still ends in U+FFFD. A character split over tokens spans at most 4 of them
                // (each carries at least one byte), so the text of all but the last 3 pending
                // tokens is final once it agrees with the current text: release it, which keeps
                // invalid output flowing and the work per token bounded.
                if pending.len() >= 4 {
                    let k = pending.len() - 3;
                    let head = decode_joined(hf, context, &pending[..k])?;
                    if head.len() > context_text.len() && text.starts_with(&head) {
                        if let Some(new) = head.strip_prefix(context_text.as_str()) {
                            let new = new.to_owned();
                            *context = pending.drain(..k).collect();
                            *context_text = hf.decode(context)?;
                            return Ok(Some(new));
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    /// At the end: whatever is left (invalid leftovers as U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        match &mut self.state {
            State::Bytes { pending, .. } => {
                let rest = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                (!rest.is_empty()).then_some(rest)
            }
            State::Text { hf, context, context_text, pending } => {
                if pending.is_empty() {
                    return None;
                }
                let text = decode_joined(hf, context, pending).ok()?;
                let rest = text.strip_prefix(context_text.as_str()).map(str::to_owned);
                *context = std::mem::take(pending);
                *context_text = hf.decode(context).unwrap_or_default();
                rest.filter(|r| !r.is_empty())
            }
        }
    }
}
