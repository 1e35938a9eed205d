//! GGUF `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokenizer.ggml.tokens` and
//! `tokenizer.ggml.merges`, pre-tokenized by the regex list llama.cpp's llama-vocab.cpp assigns
//! to `tokenizer.ggml.pre`. The BPE itself runs on a `tokenizers` pipeline built in code
//! (Split(regex, Isolated)... + ByteLevel + BPE), the same one HF tokenizer.json files describe
//! and that produced llama.cpp's reference ids. Special tokens are split out beforehand with
//! llama.cpp's rules, and decoding maps the byte-level alphabet back to bytes here.

use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::vocab::{gguf_specials, gguf_str, gguf_strings, gguf_vocab, parse_byte_token, Fragment, TokenType, Vocab};
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;

// Pre-tokenizer regexes (data from llama.cpp's llama-vocab.cpp / the models' tokenizer.json).
// Where llama.cpp rewrote `(?i:'s|...)` for std::regex, the original tokenizer.json form is used.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// CJK ideographs, the range below them and Hangul, shared by both DeepSeek lists.
const DEEPSEEK_CJK: &str = "[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    // Cased letters, written as escapes: several of them (U+1F7D, U+1FBE, U+2126, U+212A...)
    // have canonical equivalents that an editor or a normalizing copy would silently swap in.
    "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\
     \u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\
     \u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\
     \u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\
     \u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\
     \u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\
     \u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\
     \u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\
     \u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\
     \u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\
     \u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\
     \u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\
     \u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    "\\s+$",
    DEEPSEEK_CJK,
    "\\p{N}+",
];
const DEEPSEEK_CODER: &[&str] = &["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", DEEPSEEK_CJK, "\\p{N}"];

struct PreType {
    regexes: &'static [&'static str],
    /// Words that are whole vocabulary entries skip merging (HF BPE `ignore_merges`).
    ignore_merges: bool,
    /// llama.cpp's add_bos default when `tokenizer.ggml.add_bos_token` is absent.
    add_bos: bool,
}

const SUPPORTED_PRE: &str = "default (or none), gpt-2, llama3, llama-v3, llama-bpe, qwen2, deepseek-r1-qwen, deepseek-llm, deepseek-coder";

fn pre_type(name: Option<&str>) -> Option<PreType> {
    let p = |regexes, ignore_merges, add_bos| PreType { regexes, ignore_merges, add_bos };
    Some(match name {
        // llama.cpp itself uses an older generic list for "default"; GPT-2's regex is what the
        // GPT-2/NeoX-style tokenizers without a pre type were trained with.
        None | Some("default" | "gpt-2") => p(&[GPT2], false, false),
        Some("llama3" | "llama-v3" | "llama-bpe") => p(&[LLAMA3], true, true),
        Some("qwen2" | "deepseek-r1-qwen") => p(&[QWEN2], false, false),
        Some("deepseek-llm") => p(DEEPSEEK_LLM, false, false),
        Some("deepseek-coder") => p(DEEPSEEK_CODER, false, false),
        Some(_) => return None,
    })
}

/// GPT-2's byte-to-unicode alphabet, inverted: printable bytes stand for themselves, the other 68
/// bytes were shifted to U+0100.. in byte order.
fn byte_level_alphabet() -> Vec<(char, u8)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                shifted += 1;
                (char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER), b)
            }
        })
        .collect()
}

pub(crate) struct BpeTokenizer {
    pub vocab: Vocab,
    pub pre: String,
    hf: tokenizers::Tokenizer,
    /// char -> byte for U+0000..U+0143, the whole byte-level alphabet.
    unbyte: [Option<u8>; 0x144],
}

impl BpeTokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        const MERGES: &str = "tokenizer.ggml.merges";
        const PRE: &str = "tokenizer.ggml.pre";
        let pre_name = gguf_str(gguf, PRE)?;
        let pre = pre_type(pre_name).ok_or_else(|| {
            Error::field(
                &gguf.path,
                PRE,
                format!("unsupported pre-tokenizer type '{}' (supported: {SUPPORTED_PRE})", pre_name.unwrap_or_default()),
            )
        })?;

        let mut vocab = gguf_vocab(gguf)?;
        gguf_specials(gguf, &mut vocab, None, None, pre.add_bos)?;

        // Merges are "left right"; ranks are list positions. Merges that name or produce
        // strings outside the vocabulary can never apply, and the BPE builder rejects them.
        let merges_raw = gguf_strings(gguf, MERGES)?.ok_or_else(|| Error::field(&gguf.path, MERGES, "missing"))?;
        let mut merges = Vec::with_capacity(merges_raw.len());
        for m in &merges_raw {
            // llama.cpp splits at the first space after the first byte.
            let Some(split) = m.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1) else { continue };
            let (a, b) = (&m[..split], &m[split + 1..]);
            if vocab.id(a).is_some() && vocab.id(b).is_some() && vocab.id(&format!("{a}{b}")).is_some() {
                merges.push((a.to_owned(), b.to_owned()));
            }
        }
        let bpe_vocab: BpeVocab = (0..vocab.len() as u32)
            .filter_map(|id| vocab.text(id).filter(|t| vocab.id(t) == Some(id)).map(|t| (t.to_owned(), id)))
            .collect();
        let tok_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::field(&gguf.path, MERGES, e.to_string());
        let bpe = BPE::builder().vocab_and_merges(bpe_vocab, merges).ignore_merges(pre.ignore_merges).build().map_err(tok_err)?;

        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for re in pre.regexes {
            let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(Sequence::new(steps)));

        let mut unbyte = [None; 0x144];
        for (c, b) in byte_level_alphabet() {
            if let Some(slot) = unbyte.get_mut(c as usize) {
                *slot = Some(b);
            }
        }
        Ok(BpeTokenizer { vocab, pre: pre_name.unwrap_or("default").to_owned(), hf, unbyte })
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        for f in self.vocab.partition(text) {
            match f {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(t) => {
                    let enc = self.hf.encode(t, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                    out.extend_from_slice(enc.get_ids());
                }
            }
        }
        self.vocab.push_eos(&mut out, add_special);
        Ok(out)
    }

    /// Bytes of one token for decoding (llama.cpp's token_to_piece without special tokens):
    /// normal tokens through the byte-level alphabet, user-defined ones verbatim.
    pub fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let text = self.vocab.checked_text(id)?;
        match self.vocab.token_type(id) {
            Some(TokenType::Normal) => {
                for c in text.chars() {
                    match self.unbyte.get(c as usize).copied().flatten() {
                        Some(b) => out.push(b),
                        // Not in the alphabet: no byte-level vocabulary has these; keep the text.
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
            }
            Some(TokenType::UserDefined) => out.extend_from_slice(text.as_bytes()),
            Some(TokenType::Byte) => match parse_byte_token(text) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(text.as_bytes()),
            },
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_gpt2s() {
        let a = byte_level_alphabet();
        assert_eq!(a[b'A' as usize], ('A', b'A'));
        assert_eq!(a[b' ' as usize], ('\u{120}', b' ')); // 'Ġ'
        assert_eq!(a[b'\n' as usize], ('\u{10A}', b'\n')); // 'Ċ'
        assert_eq!(a[0xAD], ('\u{143}', 0xAD));
        let mut chars: Vec<char> = a.iter().map(|&(c, _)| c).collect();
        chars.sort();
        chars.dedup();
        assert_eq!(chars.len(), 256);
    }

    #[test]
    fn every_regex_compiles() {
        for name in ["default", "llama3", "qwen2", "deepseek-llm", "deepseek-coder"] {
            for re in pre_type(Some(name)).unwrap().regexes {
                Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false).unwrap();
            }
        }
    }
}
