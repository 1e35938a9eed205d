//! Hugging Face tokenizer.json through the `tokenizers` crate, with BOS/EOS taken from the files
//! next to it (tokenizer_config.json, generation_config.json, config.json) and the
//! post-processor's template.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value as Json;
use tokenizers::models::ModelWrapper;

use super::vocab::{eog_ids, parse_byte_token};
use crate::error::{Error, Result};

pub(crate) struct HfTokenizer {
    pub tok: tokenizers::Tokenizer,
    pub special: HashSet<u32>,
    /// `<0xXX>` tokens when the decoder has ByteFallback, which renders a whole run of them at
    /// once (all U+FFFD if the run is not valid UTF-8), so a run is final only once it ends.
    pub byte_pieces: HashSet<u32>,
    pub vocab_size: usize,
    pub bos: Option<u32>,
    pub eog: Vec<u32>,
    pub model_type: &'static str,
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A token given as `"<s>"` or `{"content": "<s>", ...}` (tokenizer_config.json).
fn token_content(v: &Json) -> Option<&str> {
    v.as_str().or_else(|| v.get("content")?.as_str())
}

/// An id given as `2` or `[2, 32000]` (config.json / generation_config.json).
fn ids_of(v: &Json) -> Vec<u32> {
    match v {
        Json::Array(a) => a.iter().filter_map(|x| x.as_u64()).filter_map(|x| u32::try_from(x).ok()).collect(),
        _ => v.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
    }
}

impl HfTokenizer {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // The tokenizers crate panics on some malformed files (e.g. a broken "decoder"); that is
        // an error in the file, reported as one.
        let parsed = crate::util::catch_panic(|| text.parse::<tokenizers::Tokenizer>()).map_err(|e| Error::corrupt(path, format!("not a usable tokenizer.json: {}", e.lines().next().unwrap_or(""))))?;
        let tok = parsed.map_err(|e| Error::corrupt(path, format!("not a usable tokenizer.json: {e}")))?;

        let vocab = tok.get_vocab(true);
        let vocab_size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let added = tok.get_added_tokens_decoder();
        let special: HashSet<u32> = added.iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        let model_type = match tok.get_model() {
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::WordLevel(_) => "WordLevel",
            ModelWrapper::Unigram(_) => "Unigram",
        };

        let byte_fallback = tok.get_decoder().and_then(|d| serde_json::to_string(d).ok()).is_some_and(|d| d.contains("\"ByteFallback\""));
        let byte_pieces: HashSet<u32> = if byte_fallback {
            vocab.iter().filter(|(piece, _)| parse_byte_token(piece).is_some()).map(|(_, &id)| id).collect()
        } else {
            HashSet::new()
        };

        let dir = path.parent().unwrap_or(Path::new("."));
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json(&dir.join("generation_config.json"))?;
        let config = read_json(&dir.join("config.json"))?;
        let valid = |id: u32| (id as usize) < vocab_size;
        let by_content = |v: &Json| token_content(v).and_then(|s| tok.token_to_id(s));

        // BOS: tokenizer_config.json decides when it has the key (null means none), then the
        // model configs, then a special token that opens the post-processor's template.
        let bos = match tok_config.as_ref().and_then(|c| c.get("bos_token")) {
            Some(v) => by_content(v),
            None => [&gen_config, &config]
                .into_iter()
                .flatten()
                .find_map(|c| ids_of(c.get("bos_token_id")?).first().copied())
                .or_else(|| template_bos(&tok)),
        }
        .filter(|&id| valid(id));

        // EOS: every id any of the files names, then EOT-style special tokens of the vocabulary.
        let mut eos: Vec<u32> = Vec::new();
        eos.extend(tok_config.as_ref().and_then(|c| by_content(c.get("eos_token")?)));
        for c in [&gen_config, &config].into_iter().flatten() {
            eos.extend(c.get("eos_token_id").map(ids_of).unwrap_or_default());
        }
        eos.retain(|&id| valid(id));
        let eog = eog_ids(eos, |s| tok.token_to_id(s).filter(|id| special.contains(id)));

        Ok(HfTokenizer { tok, special, byte_pieces, vocab_size, bos, eog, model_type })
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.tok.encode(text, add_special).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Input(format!("token id {id} is out of range (vocabulary has {} tokens)", self.vocab_size)));
        }
        self.tok.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// The special token a TemplateProcessing post-processor puts first (e.g. Llama's `<s>`), also
/// inside a Sequence of post-processors (Llama 3 style).
fn template_bos(tok: &tokenizers::Tokenizer) -> Option<u32> {
    let pp = serde_json::to_value(tok.get_post_processor()?).ok()?;
    let nested = pp.get("processors").and_then(Json::as_array).into_iter().flatten();
    std::iter::once(&pp).chain(nested).find_map(|p| {
        let first = p.get("single")?.as_array()?.first()?.get("SpecialToken")?.get("id")?.as_str()?;
        let id = p.get("special_tokens")?.get(first)?.get("ids")?.as_array()?.first()?.as_u64()?;
        u32::try_from(id).ok()
    })
}
