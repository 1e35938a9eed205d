//! SentencePiece-style BPE over token scores, as llama.cpp's llm_tokenizer_spm and llama2.c's
//! encode do it: start from UTF-8 characters, repeatedly merge the adjacent pair whose
//! concatenation is the highest-scoring vocabulary entry (ties: leftmost), and spell anything
//! left without a token as `<0xXX>` byte tokens. A priority queue with lazy invalidation keeps
//! this O(n log n) (llama2.c rescans the whole sequence per merge, which is O(n^2)).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::{Fragment, TokenType, Vocab};
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    start: usize, // byte offset in the text; a symbol always covers text[start..start + len]
    len: usize,   // 0 once merged into its left neighbour
    prev: usize,
    next: usize,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize, // byte length of the merged text, to detect stale entries
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher score first, then the leftmost pair.
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Score-driven merging of `text` (already space-escaped the way the vocabulary spells spaces).
/// `byte_token` maps a byte to its fallback token.
pub(crate) fn merge(
    vocab: &Vocab,
    text: &str,
    byte_token: impl Fn(u8) -> Result<u32>,
    out: &mut Vec<u32>,
) -> Result<()> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol { start, len: c.len_utf8(), prev: i.wrapping_sub(1), next: i + 1 });
    }
    let Some(last) = symbols.last_mut() else { return Ok(()) };
    last.next = NONE;

    let mut queue = BinaryHeap::new();
    let try_add = |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left], symbols[right]);
        let len = l.len + r.len;
        if let Some(id) = vocab.id(&text[l.start..l.start + len]) {
            // Order like llama.cpp's float `<`: -0.0 ties with 0.0 (then leftmost wins), NaN loses.
            let score = match vocab.score(id) {
                s if s.is_nan() => f32::NEG_INFINITY,
                s if s == 0.0 => 0.0,
                s => s,
            };
            queue.push(Bigram { score, left, right, len });
        }
    };
    for i in 1..symbols.len() {
        try_add(&symbols, &mut queue, i - 1, i);
    }

    while let Some(b) = queue.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        // Either side merged since this pair was queued: symbols only grow or vanish.
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        symbols[b.left].len = b.len;
        symbols[b.left].next = r.next;
        symbols[b.right].len = 0;
        if r.next != NONE {
            symbols[r.next].prev = b.left;
        }
        try_add(&symbols, &mut queue, l.prev, b.left);
        try_add(&symbols, &mut queue, b.left, r.next);
    }

    // Every merged symbol is a vocabulary entry; only single characters can be missing.
    let mut i = 0;
    while i != NONE {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(byte_token(b)?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}

/// How a vocabulary spells its input.
pub(crate) struct SpmOptions {
    /// GGUF vocabularies spell spaces as U+2581; llama2.c's tokenizer.bin uses real spaces.
    pub escape_spaces: bool,
    /// Prepend a space to the text (and after every special token), SentencePiece's dummy prefix.
    pub add_space_prefix: bool,
    /// Split out control/user-defined tokens written in the text (GGUF); llama2.c never does.
    pub parse_special: bool,
    /// Last resort for a byte without a byte-fallback token.
    pub unk: Option<u32>,
}

/// SPM tokenizer over a GGUF "llama" vocabulary or a llama2.c tokenizer.bin.
pub(crate) struct SpmTokenizer {
    pub vocab: Vocab,
    opts: SpmOptions,
    byte_tokens: [Option<u32>; 256],
}

impl SpmTokenizer {
    pub fn new(vocab: Vocab, mut opts: SpmOptions) -> Self {
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            // llama.cpp's byte_to_token: the <0xXX> token, else the byte itself as a token.
            *slot = vocab.id(&format!("<0x{b:02X}>")).or_else(|| {
                let b = b as u8;
                if b.is_ascii() { vocab.id(std::str::from_utf8(&[b]).ok()?) } else { None }
            });
        }
        opts.unk = opts.unk.filter(|&u| (u as usize) < vocab.len());
        SpmTokenizer { vocab, opts, byte_tokens }
    }

    /// Override the byte-fallback table (llama2.c hard-codes byte b -> id b + 3).
    pub fn set_byte_tokens(&mut self, f: impl Fn(u8) -> Option<u32>) {
        for (b, slot) in self.byte_tokens.iter_mut().enumerate() {
            *slot = f(b as u8);
        }
    }

    /// GGUF `tokenizer.ggml.model = "llama"`, with llama.cpp's SPM defaults.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let mut vocab = super::vocab::gguf_vocab(gguf)?;
        super::vocab::gguf_specials(gguf, &mut vocab, Some(1), Some(2), true)?;
        let n = vocab.len();
        let unk = super::vocab::gguf_token_id(gguf, "tokenizer.ggml.unknown_token_id", n)?.or(Some(0));
        let add_space_prefix = super::vocab::gguf_bool(gguf, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
        Ok(SpmTokenizer::new(vocab, SpmOptions { escape_spaces: true, add_space_prefix, parse_special: true, unk }))
    }

    pub fn strips_leading_space(&self) -> bool {
        self.opts.add_space_prefix
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        let fragments =
            if self.opts.parse_special { self.vocab.partition(text) } else if text.is_empty() { vec![] } else { vec![Fragment::Text(text)] };
        let byte_token = |b: u8| {
            self.byte_tokens[b as usize]
                .or(self.opts.unk)
                .ok_or_else(|| Error::Tokenizer(format!("no byte-fallback token for byte 0x{b:02X} and no unknown token")))
        };
        let mut after_special = true; // the dummy prefix goes before the first text and after specials
        let mut buf = String::new();
        for f in fragments {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(t) => {
                    buf.clear();
                    if self.opts.add_space_prefix && after_special {
                        buf.push(' ');
                    }
                    buf.push_str(t);
                    if self.opts.escape_spaces {
                        buf = buf.replace(' ', "\u{2581}");
                    }
                    merge(&self.vocab, &buf, byte_token, &mut out)?;
                    after_special = false;
                }
            }
        }
        self.vocab.push_eos(&mut out, add_special);
        Ok(out)
    }

    /// Bytes of one token for decoding: control/unknown/unused tokens give nothing.
    pub fn append_piece(&self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let text = self.vocab.checked_text(id)?;
        match self.vocab.token_type(id) {
            Some(TokenType::Normal) if self.opts.escape_spaces => out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
            Some(TokenType::Normal | TokenType::UserDefined) => out.extend_from_slice(text.as_bytes()),
            Some(TokenType::Byte) => match super::vocab::parse_byte_token(text) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(text.as_bytes()),
            },
            _ => {}
        }
        Ok(())
    }
}
