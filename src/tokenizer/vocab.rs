//! Vocabulary shared by the GGUF (SPM and byte-level BPE) and llama2.c tokenizers: token strings,
//! llama.cpp token types, string lookup, special-token splitting of input text and the
//! BOS/EOS/end-of-generation configuration.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control,
/// 4 user-defined, 5 unused, 6 byte; anything else is undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Tokens written literally in the input become that token instead of being tokenized
    /// (llama.cpp's tokenizer_st_partition with parse_special, which is also what HF does with
    /// its added tokens).
    fn matched_in_text(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined | TokenType::Unknown)
    }
}

/// Piece of input text after special-token splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Token texts that end generation besides EOS (from llama.cpp's EOG list).
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

/// EOS ids first (in the given order), then every token named in EOG_NAMES that `lookup` finds.
pub(crate) fn eog_ids(primary: impl IntoIterator<Item = u32>, lookup: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for id in primary.into_iter().chain(EOG_NAMES.iter().filter_map(|n| lookup(n))) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Value of a `<0xXX>` byte token.
pub(crate) fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

pub(crate) struct Vocab {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    lookup: HashMap<String, u32>,
    /// Tokens matched literally in text, by their first two bytes (or one for 1-byte tokens).
    special_by_prefix: HashMap<(u8, Option<u8>), Vec<u32>>,
    /// Order in which llama.cpp tries special tokens: longest text first (ties: lower id).
    special_rank: HashMap<u32, usize>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// All ids that end generation, EOS first.
    pub eog: Vec<u32>,
}

impl Vocab {
    /// `scores` and `types` must have the same length as `tokens`. Special ids are set by the caller.
    pub fn new(tokens: Vec<String>, types: Vec<TokenType>, scores: Vec<f32>) -> Self {
        debug_assert!(tokens.len() == types.len() && tokens.len() == scores.len());
        let mut lookup = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            // Empty strings can never be produced or matched; duplicates keep their first id.
            if !t.is_empty() {
                lookup.entry(t.clone()).or_insert(id as u32);
            }
        }
        let mut specials: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&id| types[id as usize].matched_in_text() && !tokens[id as usize].is_empty())
            .collect();
        specials.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()).then(a.cmp(&b)));
        let special_rank = specials.iter().enumerate().map(|(rank, &id)| (id, rank)).collect();
        let mut special_by_prefix: HashMap<(u8, Option<u8>), Vec<u32>> = HashMap::new();
        for &id in &specials {
            let b = tokens[id as usize].as_bytes();
            special_by_prefix.entry((b[0], b.get(1).copied())).or_default().push(id);
        }
        Vocab {
            tokens,
            types,
            scores,
            lookup,
            special_by_prefix,
            special_rank,
            bos: None,
            eos: None,
            add_bos: false,
            add_eos: false,
            eog: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn id(&self, text: &str) -> Option<u32> {
        self.lookup.get(text).copied()
    }
    pub fn text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
    /// Callers index with ids they got from this vocabulary.
    pub fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The text of a token id, or an error for an id outside the vocabulary.
    pub fn checked_text(&self, id: u32) -> Result<&str> {
        self.check_id(id)?;
        Ok(self.text(id).unwrap_or_default())
    }

    /// Appends the EOS token when the vocabulary asks for it after special tokens are added.
    pub fn push_eos(&self, ids: &mut Vec<u32>, add_special: bool) {
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
    }

    pub fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.tokens.len() {
            Ok(())
        } else {
            Err(Error::Input(format!("token id {id} is out of range (vocabulary has {} tokens)", self.tokens.len())))
        }
    }

    /// Split `text` at literal occurrences of control/user-defined/unknown tokens, with the result
    /// of llama.cpp's tokenizer_st_partition: special tokens are tried longest first, each taking
    /// its leftmost non-overlapping occurrences inside the text that is still unclaimed.
    /// Found in one pass over the text instead of one search per special token.
    pub fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let bytes = text.as_bytes();
        let mut candidates: Vec<(usize, usize, u32)> = Vec::new(); // (rank, start, id)
        if !self.special_by_prefix.is_empty() {
            for i in 0..bytes.len() {
                let keys = [(bytes[i], None), (bytes[i], bytes.get(i + 1).copied())];
                for key in keys.iter().take(if i + 1 < bytes.len() { 2 } else { 1 }) {
                    for &id in self.special_by_prefix.get(key).into_iter().flatten() {
                        if bytes[i..].starts_with(self.tokens[id as usize].as_bytes()) {
                            candidates.push((self.special_rank[&id], i, id));
                        }
                    }
                }
            }
        }
        if candidates.is_empty() {
            return if text.is_empty() { Vec::new() } else { vec![Fragment::Text(text)] };
        }
        candidates.sort_unstable();

        let mut taken: BTreeMap<usize, (usize, u32)> = BTreeMap::new(); // start -> (end, id)
        let mut current_rank = usize::MAX;
        let mut next_start = 0; // occurrences of one token do not overlap each other
        for (rank, start, id) in candidates {
            if rank != current_rank {
                current_rank = rank;
                next_start = 0;
            }
            let end = start + self.tokens[id as usize].len();
            if start < next_start {
                continue;
            }
            if let Some((_, &(prev_end, _))) = taken.range(..end).next_back() {
                if prev_end > start {
                    continue;
                }
            }
            taken.insert(start, (end, id));
            next_start = end;
        }

        // Token boundaries are char boundaries: a match of valid UTF-8 starts on a lead byte.
        let mut out = Vec::with_capacity(2 * taken.len() + 1);
        let mut pos = 0;
        for (start, (end, id)) in taken {
            if start > pos {
                out.push(Fragment::Text(&text[pos..start]));
            }
            out.push(Fragment::Token(id));
            pos = end;
        }
        if pos < text.len() {
            out.push(Fragment::Text(&text[pos..]));
        }
        out
    }
}

// ---- GGUF metadata helpers ----

fn field_err(gguf: &GgufFile, key: &str, msg: impl Into<String>) -> Error {
    Error::field(&gguf.path, key, msg)
}

pub(crate) fn gguf_str<'g>(gguf: &'g GgufFile, key: &str) -> Result<Option<&'g str>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| field_err(gguf, key, "expected a string")),
    }
}

pub(crate) fn gguf_bool(gguf: &GgufFile, key: &str) -> Result<Option<bool>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| field_err(gguf, key, "expected a bool")),
    }
}

/// A token id key; ids outside the vocabulary are an error.
pub(crate) fn gguf_token_id(gguf: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
            Some(id) => Err(field_err(gguf, key, format!("token id {id} outside the vocabulary of {n_tokens}"))),
            None => Err(field_err(gguf, key, "expected an unsigned integer")),
        },
    }
}

fn gguf_array<'g>(gguf: &'g GgufFile, key: &str) -> Result<Option<&'g [Value]>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or_else(|| field_err(gguf, key, "expected an array")),
    }
}

pub(crate) fn gguf_strings(gguf: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    let Some(arr) = gguf_array(gguf, key)? else { return Ok(None) };
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_owned).ok_or_else(|| field_err(gguf, key, format!("element {i} is not a string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `tokenizer.ggml.tokens` plus the optional per-token scores and types (defaults: 0, normal).
pub(crate) fn gguf_vocab(gguf: &GgufFile) -> Result<Vocab> {
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const SCORES: &str = "tokenizer.ggml.scores";
    const TYPES: &str = "tokenizer.ggml.token_type";
    let tokens = gguf_strings(gguf, TOKENS)?.ok_or_else(|| field_err(gguf, TOKENS, "missing"))?;
    if tokens.is_empty() {
        return Err(field_err(gguf, TOKENS, "empty vocabulary"));
    }
    if tokens.len() > u32::MAX as usize {
        return Err(field_err(gguf, TOKENS, "too many tokens"));
    }
    let n = tokens.len();
    let scores = match gguf_array(gguf, SCORES)? {
        None => vec![0.0; n],
        Some(a) if a.len() >= n => a[..n]
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| field_err(gguf, SCORES, "expected numbers")))
            .collect::<Result<_>>()?,
        Some(a) => return Err(field_err(gguf, SCORES, format!("{} scores for {n} tokens", a.len()))),
    };
    let types = match gguf_array(gguf, TYPES)? {
        None => vec![TokenType::Normal; n],
        Some(a) if a.len() >= n => a[..n]
            .iter()
            .map(|v| match *v {
                Value::I32(c) => Ok(TokenType::from_code(c as i64)),
                _ => v.as_u64().map(|c| TokenType::from_code(c as i64)).ok_or_else(|| field_err(gguf, TYPES, "expected integers")),
            })
            .collect::<Result<_>>()?,
        Some(a) => return Err(field_err(gguf, TYPES, format!("{} token types for {n} tokens", a.len()))),
    };
    Ok(Vocab::new(tokens, types, scores))
}

/// BOS/EOS ids, add_bos/add_eos flags and end-of-generation ids from the GGUF keys, with the
/// given defaults for a missing key (llama.cpp's per-model defaults).
pub(crate) fn gguf_specials(
    gguf: &GgufFile,
    vocab: &mut Vocab,
    default_bos: Option<u32>,
    default_eos: Option<u32>,
    default_add_bos: bool,
) -> Result<()> {
    let n = vocab.len();
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
    vocab.bos = gguf_token_id(gguf, "tokenizer.ggml.bos_token_id", n)?.or(in_range(default_bos));
    vocab.eos = gguf_token_id(gguf, "tokenizer.ggml.eos_token_id", n)?.or(in_range(default_eos));
    vocab.add_bos = gguf_bool(gguf, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    vocab.add_eos = gguf_bool(gguf, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if vocab.add_bos && vocab.bos.is_none() {
        return Err(field_err(gguf, "tokenizer.ggml.bos_token_id", "add_bos_token is true but there is no BOS token"));
    }
    if vocab.add_eos && vocab.eos.is_none() {
        return Err(field_err(gguf, "tokenizer.ggml.eos_token_id", "add_eos_token is true but there is no EOS token"));
    }
    let eot = gguf_token_id(gguf, "tokenizer.ggml.eot_token_id", n)?;
    let eom = gguf_token_id(gguf, "tokenizer.ggml.eom_token_id", n)?;
    vocab.eog = eog_ids(vocab.eos.into_iter().chain(eot).chain(eom), |s| vocab.id(s));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(specials: &[&str]) -> Vocab {
        let mut tokens = vec!["a".to_string(), "b".to_string()];
        let mut types = vec![TokenType::Normal; 2];
        for s in specials {
            tokens.push(s.to_string());
            types.push(TokenType::Control);
        }
        let n = tokens.len();
        Vocab::new(tokens, types, vec![0.0; n])
    }

    #[test]
    fn partition_prefers_longer_tokens_like_llama_cpp() {
        let v = vocab(&["ab", "bcd"]); // ids 2, 3
        assert_eq!(v.partition("abcd"), vec![Fragment::Text("a"), Fragment::Token(3)]);
        assert_eq!(v.partition("xabx"), vec![Fragment::Text("x"), Fragment::Token(2), Fragment::Text("x")]);
        assert_eq!(v.partition(""), vec![]);
        let v = vocab(&["aa"]);
        assert_eq!(v.partition("aaa"), vec![Fragment::Token(2), Fragment::Text("a")]);
        assert_eq!(v.partition("é<aa>"), vec![Fragment::Text("é<"), Fragment::Token(2), Fragment::Text(">")]);
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xFF>"), Some(255));
        assert_eq!(parse_byte_token("<0x1>"), None);
        assert_eq!(parse_byte_token("0x10"), None);
    }
}
