//! Models: architecture families, weights by Hugging Face name, the float forward pass, KV cache,
//! and `load`, which turns a path (HF folder, .gguf, llama2.c .bin) into a runnable model.

pub mod config;
pub mod kv_cache;
pub mod linear_group;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod transformer;
pub mod weights;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::llama2c::Llama2cFile;
use crate::format::safetensors::SafetensorsModel;
use crate::tokenizer::Tokenizer;
use crate::util::{Progress, Silent};
use config::{GgufMeta, HfConfig, ModelConfig, RopeConfig};
pub use kv_cache::KvCache;
pub use linear_group::LinearGroup;
pub use transformer::{ActivationObserver, ChunkState, Logits, Transformer};
use weights::Weights;

/// One architecture family: how its config is read from each format. The forward pass is shared.
pub struct Family {
    pub name: &'static str,
    pub hf_model_types: &'static [&'static str],
    pub gguf_archs: &'static [&'static str],
    pub from_hf: fn(&HfConfig) -> Result<ModelConfig>,
    pub from_gguf: fn(&GgufMeta) -> Result<ModelConfig>,
}

pub static FAMILIES: &[&Family] = &[&llama::FAMILY, &qwen2::FAMILY, &qwen3::FAMILY, &gemma::FAMILY, &gemma2::FAMILY, &gemma3::FAMILY, &phi3::FAMILY];

fn supported(f: impl Fn(&Family) -> &'static [&'static str]) -> String {
    FAMILIES.iter().flat_map(|fam| f(fam).iter().copied()).collect::<Vec<_>>().join(", ")
}

/// A model ready to run, with its tokenizer when one was found.
pub struct LoadedModel {
    pub path: PathBuf,
    pub format: &'static str,
    pub model: Transformer,
    pub tokenizer: Option<Tokenizer>,
    pub weights: Weights,
    /// The model's Jinja chat template, when it ships one (see `chat_template_source`).
    pub chat_template: Option<String>,
    /// What engines make from these weights, shared by every engine built on the model.
    pub derived: Derived,
}

/// Things engines make from a loaded model's weights (the npu backend's int8 weights), made once
/// per key and shared while the model is loaded: `demo` and `bench --ablation` build several npu
/// engines of one model, which would otherwise each quantize and hold their own copy.
#[derive(Default)]
pub struct Derived(std::sync::Mutex<Vec<(String, std::sync::Arc<dyn std::any::Any + Send + Sync>)>>);

impl Derived {
    /// The thing kept under `key`, made by `make` when there is none yet (a caller asking
    /// meanwhile waits for it; `make` must not ask this store itself); true when this call
    /// made it.
    pub fn get_or_make<T: std::any::Any + Send + Sync>(&self, key: &str, make: impl FnOnce() -> T) -> (std::sync::Arc<T>, bool) {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = slots.iter().filter(|(k, _)| k == key).find_map(|(_, v)| v.clone().downcast::<T>().ok()) {
            return (found, false);
        }
        let made = std::sync::Arc::new(make());
        slots.push((key.to_string(), made.clone()));
        (made, true)
    }
}

impl LoadedModel {
    /// Every token id that ends generation: the config's EOS ids, then the tokenizer's EOS and
    /// end-of-turn tokens.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut ids = self.model.config.eos_token_ids.clone();
        ids.extend(self.tokenizer.iter().flat_map(|t| t.eos_ids()));
        ids
    }

    /// The chat template ready to render (the model's own, or `source` instead), with the
    /// tokenizer's BOS and EOS strings.
    pub fn chat_template(&self, source: Option<&str>) -> Result<crate::chat::ChatTemplate> {
        let source = source.or(self.chat_template.as_deref()).ok_or_else(|| {
            Error::Input(format!(
                "{} has no chat template (none in tokenizer_config.json, chat_template.jinja or the GGUF's tokenizer.chat_template); pass one with --chat-template FILE",
                self.path.display()
            ))
        })?;
        let tok = self.tokenizer.as_ref().ok_or_else(|| Error::Input("chat needs the model's tokenizer; pass --tokenizer".into()))?;
        let piece = |id: Option<u32>| id.and_then(|i| tok.id_to_piece(i)).unwrap_or_default();
        crate::chat::ChatTemplate::new(source, &piece(tok.bos_id()), &piece(tok.eos_ids().first().copied()))
    }
}

/// Where a model keeps its chat template: chat_template.jinja or tokenizer_config.json's
/// `chat_template` (a string, or a list of named templates of which "default" is used) in a
/// Hugging Face folder; `tokenizer.chat_template` in a GGUF file.
fn chat_template_source(path: &Path, weights: &Weights) -> Result<Option<String>> {
    if let Weights::Gguf(file) = weights {
        return Ok(file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_owned));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let jinja = path.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja).map(Some).map_err(|e| Error::io(&jinja, e));
    }
    let config = path.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Corrupt { path: config.clone(), msg: e.to_string() })?;
    Ok(match &v["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named = |name: &str| list.iter().find(|t| t["name"] == name).and_then(|t| t["template"].as_str());
            named("default").or_else(|| list.first().and_then(|t| t["template"].as_str())).map(str::to_owned)
        }
        _ => None,
    })
}

pub struct LoadOptions<'a> {
    /// Tokenizer file to use instead of the one inside/beside the model (required for llama2.c).
    pub tokenizer: Option<&'a Path>,
    /// Told of every tensor read.
    pub progress: &'a dyn Progress,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions { tokenizer: None, progress: &Silent }
    }
}

/// Loads a Hugging Face folder, a GGUF file or a llama2.c checkpoint.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")));
    }
    if path.is_file() && path.extension().is_some_and(|e| e == "safetensors" || e == "json") {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Err(Error::Input(format!("{}: pass the Hugging Face model folder ({}), not a file inside it", path.display(), dir.display())));
    }
    let (config, weights, mut tokenizer) = if path.is_dir() {
        open_hf_dir(path)?
    } else if has_magic(path, b"GGUF")? {
        open_gguf(path)?
    } else {
        open_llama2c(path)?
    };
    if let Some(t) = opts.tokenizer {
        tokenizer = Some(open_tokenizer_file(t)?);
    }
    opts.progress.start("loading", "tensors", Transformer::tensor_count(&config) as u64);
    let model = Transformer::load(config, &weights, opts.progress)?;
    opts.progress.finish();
    if let Some(tok) = &tokenizer {
        if tok.vocab_size() > model.config.vocab_size {
            return Err(Error::Input(format!(
                "the tokenizer has {} tokens but the model's vocabulary has only {}; wrong tokenizer?",
                tok.vocab_size(),
                model.config.vocab_size
            )));
        }
    }
    let chat_template = chat_template_source(path, &weights)?;
    Ok(LoadedModel { path: path.to_path_buf(), format: weights.format_name(), model, tokenizer, weights, chat_template, derived: Derived::default() })
}

fn has_magic(path: &Path, magic: &[u8]) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; magic.len()];
    Ok(f.read_exact(&mut buf).is_ok() && buf == magic)
}

/// A tokenizer file given on the command line: tokenizer.json, a GGUF vocabulary or a llama2.c tokenizer.bin.
pub fn open_tokenizer_file(path: &Path) -> Result<Tokenizer> {
    if path.extension().is_some_and(|e| e == "json") {
        Tokenizer::from_hf_file(path)
    } else if has_magic(path, b"GGUF")? {
        Tokenizer::from_gguf(&GgufFile::open(path)?)
    } else {
        Tokenizer::from_llama2c(path)
    }
}

fn open_hf_dir(dir: &Path) -> Result<(ModelConfig, Weights, Option<Tokenizer>)> {
    let cfg = HfConfig::open(&dir.join("config.json"))?;
    let model_type = cfg.model_type().ok_or_else(|| Error::field(&cfg.path, "model_type", "missing"))?;
    let family = FAMILIES.iter().find(|f| f.hf_model_types.contains(&model_type)).ok_or_else(|| Error::UnsupportedArch {
        path: cfg.path.clone(),
        arch: model_type.to_string(),
        supported: supported(|f| f.hf_model_types),
    })?;
    let mut config = (family.from_hf)(&cfg)?;
    // generation_config.json overrides config.json for BOS/EOS, as transformers' generate() does.
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        let gen = HfConfig::open(&gen_path)?;
        if let Some(b) = gen.token_ids("bos_token_id")?.first() {
            config.bos_token_id = Some(*b);
        }
        let eos = gen.token_ids("eos_token_id")?;
        if !eos.is_empty() {
            config.eos_token_ids = eos;
        }
    }
    let model = SafetensorsModel::open_dir(dir)?;
    if config.tie_word_embeddings && model.contains("lm_head.weight") {
        // Some exports keep a copy of the tied head; using it is equivalent and avoids surprises.
        config.tie_word_embeddings = false;
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() { Some(Tokenizer::from_hf_file(&tok_path)?) } else { None };
    Ok((config, Weights::Safetensors { dir: dir.to_path_buf(), model }, tokenizer))
}

fn open_gguf(path: &Path) -> Result<(ModelConfig, Weights, Option<Tokenizer>)> {
    let file = GgufFile::open(path)?;
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::field(path, "general.architecture", "missing"))?
        .to_string();
    let family = FAMILIES.iter().find(|f| f.gguf_archs.contains(&arch.as_str())).ok_or_else(|| Error::UnsupportedArch {
        path: path.to_path_buf(),
        arch: arch.clone(),
        supported: supported(|f| f.gguf_archs),
    })?;
    let config = (family.from_gguf)(&GgufMeta { file: &file, arch: &arch })?;
    let tokenizer = if file.get("tokenizer.ggml.model").is_some() { Some(Tokenizer::from_gguf(&file)?) } else { None };
    Ok((config, Weights::Gguf(file), tokenizer))
}

fn open_llama2c(path: &Path) -> Result<(ModelConfig, Weights, Option<Tokenizer>)> {
    let file = Llama2cFile::open(path)?;
    let h = file.header;
    let config = ModelConfig {
        family: llama::FAMILY.name,
        hidden_size: h.dim,
        intermediate_size: h.hidden_dim,
        num_layers: h.n_layers,
        num_heads: h.n_heads,
        num_kv_heads: h.n_kv_heads,
        head_dim: h.dim / h.n_heads,
        vocab_size: h.vocab_size,
        rms_norm_eps: 1e-5,
        rope: RopeConfig { theta: 10000.0, style: crate::kernels::ops::RopeStyle::Interleaved, llama3: None, freq_factors: None, linear_factor: None, longrope: None },
        max_seq_len: h.seq_len,
        tie_word_embeddings: h.shared_classifier,
        qkv_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        features: Default::default(),
    };
    Ok((config, Weights::Llama2c(file), None))
}
