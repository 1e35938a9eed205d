//! Small helpers shared across the crate: a reproducible random generator, random token ids,
//! the files llm-npu keeps beside a model, and the progress sink long work reports to.

use std::path::{Path, PathBuf};

/// xorshift64* generator: tiny, fast and reproducible across platforms for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 scrambles the seed so that nearby seeds give unrelated streams (and 0 is fine).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` token ids drawn uniformly from a vocabulary of `vocab` (benchmarks, calibration and
/// evaluation on random tokens).
pub fn random_tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Where llm-npu keeps a file of its own about a model (calibration, measured profile):
/// `<folder>/llm-npu-<what>.json` for an HF folder, `<file>.llm-npu-<what>.json` beside a
/// single-file model.
pub fn beside_model(model: &Path, what: &str) -> PathBuf {
    beside_model_as(model, &format!("llm-npu-{what}.json"))
}

/// `<folder>/<name>` for an HF folder, `<file>.<name>` beside a single-file model.
pub fn beside_model_as(model: &Path, name: &str) -> PathBuf {
    if model.is_dir() {
        model.join(name)
    } else {
        let mut file = model.file_name().unwrap_or_default().to_os_string();
        file.push(format!(".{name}"));
        model.with_file_name(file)
    }
}

/// llm-npu's cache folder: `$LLM_NPU_CACHE`, else `$XDG_CACHE_HOME/llm-npu`, else
/// `~/.cache/llm-npu` (None without any of them); not created here.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("LLM_NPU_CACHE").or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("llm-npu"))).or_else(|| var("HOME").map(|h| h.join(".cache/llm-npu")))
}

/// A folder of llm-npu's own beside a model (`<folder>/llm-npu-<what>/` for an HF folder,
/// `<file>.llm-npu-<what>/` beside a single-file model); not created here.
pub fn beside_model_dir(model: &Path, what: &str) -> PathBuf {
    let file = beside_model(model, what);
    file.with_extension("")
}

/// Where long work (loading, quantizing, calibrating, benchmarking) reports its progress. The
/// library never draws anything itself; the CLI shows bars, tests and the server stay silent.
pub trait Progress: Sync {
    /// A new task of `total` steps (0: not known yet) counted in `unit` ("tensors", "bytes", ...).
    fn start(&self, _task: &str, _unit: &str, _total: u64) {}
    /// `done` of `total` steps are done (the total may change while the task runs).
    fn set(&self, _done: u64, _total: u64) {}
    /// One more step is done.
    fn step(&self) {}
    /// A short status beside the bar (e.g. the last repetition's speed).
    fn status(&self, _text: &str) {}
    fn finish(&self) {}
    /// A line for the user that is not an error (e.g. a warning about a fallback taken).
    fn note(&self, _text: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

thread_local! {
    /// Set while `catch_panic` runs: the panic hook stays quiet for this thread then.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into an error message, with no panic report on stderr.
/// For dependencies that panic on malformed input instead of returning an error (the
/// `tokenizers` crate does on some tokenizer.json files): user input must never crash us.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result.map_err(|p| p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "a panic".into()))
}
