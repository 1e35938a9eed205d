//! llama2.c `tokenizer.bin`: i32 max_token_length, then per token f32 score, i32 byte length,
//! bytes. The token count is not stored (run.c takes it from the model), so records run to the
//! end of the file. Encoding is run.c's (dummy " " prefix, byte fallback id = byte + 3,
//! best-score pair merging), done by the shared SPM merger, which makes the same merges.

use std::path::Path;

use super::spm::{SpmOptions, SpmTokenizer};
use super::vocab::{eog_ids, parse_byte_token, TokenType, Vocab};
use crate::error::{Error, Result};

pub(crate) fn load(path: &Path) -> Result<SpmTokenizer> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |msg: String| Error::corrupt(path, msg);
    let read_u32 = |pos: usize| -> Option<[u8; 4]> { data.get(pos..pos + 4)?.try_into().ok() };

    let max_len = read_u32(0).map(i32::from_le_bytes).ok_or_else(|| corrupt("file too short for a llama2.c tokenizer".into()))?;
    if max_len <= 0 {
        return Err(corrupt(format!("max_token_length {max_len} is not positive")));
    }
    let (mut tokens, mut scores) = (Vec::new(), Vec::new());
    let mut pos = 4;
    while pos < data.len() {
        let i = tokens.len();
        let (Some(score), Some(len)) = (read_u32(pos), read_u32(pos + 4)) else {
            return Err(corrupt(format!("truncated record for token {i} at byte {pos}")));
        };
        let len = i32::from_le_bytes(len);
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|n| data.get(pos + 8..pos + 8 + n))
            .ok_or_else(|| corrupt(format!("token {i} at byte {pos}: bad length {len}")))?;
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt(format!("token {i} is not valid UTF-8")))?;
        tokens.push(text.to_owned());
        scores.push(f32::from_le_bytes(score));
        pos += 8 + bytes.len();
    }
    if tokens.len() < 3 {
        return Err(corrupt(format!("only {} tokens; expected <unk>, <s>, </s> and more", tokens.len())));
    }

    // run.c: 0 is <unk>, 1/2 are BOS/EOS ("\n<s>\n", "\n</s>\n"), "<0xXX>" pieces are raw bytes.
    let types = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| match id {
            0 => TokenType::Unknown,
            1 | 2 => TokenType::Control,
            _ if parse_byte_token(t).is_some() => TokenType::Byte,
            _ => TokenType::Normal,
        })
        .collect();
    let n = tokens.len();
    let mut vocab = Vocab::new(tokens, types, scores);
    vocab.bos = Some(1);
    vocab.eos = Some(2);
    vocab.add_bos = true;
    vocab.eog = eog_ids([2], |_| None);

    let opts = SpmOptions { escape_spaces: false, add_space_prefix: true, parse_special: false, unk: None };
    let mut spm = SpmTokenizer::new(vocab, opts);
    spm.set_byte_tokens(|b| Some(b as u32 + 3).filter(|&id| (id as usize) < n));
    Ok(spm)
}
