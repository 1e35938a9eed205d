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

/// Where llm-npu keeps something it made for a model in its cache folder (`cache_dir`), so later
/// runs reuse it: `<cache>/<kind>/<model>-<what>-<build>.<ext>` (without `what`:
/// `<model>-<build>.<ext>`). The model is a hash of its path and its files' sizes and
/// modification times (in an HF folder, the files llm-npu did not write itself), so a changed
/// model makes it anew; the build a hash of this program's file, since a new build may compute it
/// differently. None where there is no cache folder or the model cannot be read.
pub fn cached_for_model(kind: &str, model: &Path, what: &str, ext: &str) -> Option<PathBuf> {
    let cache = cache_dir()?;
    let model = model.canonicalize().ok()?;
    let mut files = vec![model.clone()];
    if model.is_dir() {
        files = std::fs::read_dir(&model).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("llm-npu-"))).collect();
        files.sort();
    }
    let build = std::env::current_exe().ok()?;
    let what = if what.is_empty() { String::new() } else { format!("{what}-") };
    let name = format!("{:016x}-{what}{:016x}.{ext}", files_id(&model, &files)?, files_id(&build, std::slice::from_ref(&build))?);
    Some(cache.join(kind).join(name))
}

/// A hash of `key` and each file's path, size and modification time.
fn files_id(key: &Path, files: &[PathBuf]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hash = std::hash::DefaultHasher::new();
    key.hash(&mut hash);
    for file in files {
        let meta = file.metadata().ok()?;
        (file, meta.len(), meta.modified().ok()).hash(&mut hash);
    }
    Some(hash.finish())
}

/// Keeps a file at `path` (from `cached_for_model`) whole or not at all: `write` fills a file
/// beside it, which is then renamed into place (a concurrent run never reads half a file).
/// Then removes what other builds kept for the same thing (names that differ only in the build
/// hash after the last '-').
pub fn keep_cached(path: &Path, write: impl FnOnce(&Path) -> crate::error::Result<()>) -> crate::error::Result<()> {
    use crate::error::Error;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    if let Err(e) = write(&partial).and_then(|()| std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let (thing, ext) = (name.rsplit_once('-').map_or("", |(t, _)| t), path.extension().unwrap_or_default().to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        let another_build = other.rsplit_once('-').is_some_and(|(t, rest)| t == thing && rest.strip_suffix(&format!(".{ext}")).is_some_and(|b| !b.is_empty() && b.chars().all(|c| c.is_ascii_hexdigit())));
        if other != name && another_build {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Removes from `dir` the kept files (`keep_cached`, extension `ext`) whose model is gone
/// (`model_of` reads which one a file was made from, when it says), then the least recently used
/// ones (by modification time, which loads refresh) until the rest fit in `budget` bytes, and
/// partial files left for an hour by runs that stopped while writing; `keep` stays.
pub fn sweep_kept(dir: &Path, keep: &Path, ext: &str, budget: u64, model_of: impl Fn(&Path) -> Option<PathBuf>) {
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let age = meta.modified().ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "partial") && age > std::time::Duration::from_secs(3600) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if path.extension().is_none_or(|e| e != ext) || path == keep {
            continue;
        }
        if model_of(&path).is_some_and(|model| !model.exists()) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        files.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len(), path));
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum::<u64>() + std::fs::metadata(keep).map_or(0, |m| m.len());
    files.sort();
    for (_, len, path) in files {
        if total <= budget {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// Marks a kept file used now, for `sweep_kept`'s least recently used (opened for reading: an
/// owner may set a file's times without writing it).
pub fn mark_used(path: &Path) {
    let _ = std::fs::File::open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// FNV-1a over 8-byte words (BitStack files; not cryptographic): catches zeroed or flipped
/// data. The last word is padded with zeros and the length is not in it, so a caller checks
/// lengths itself.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// `checksum` in four interleaved chains over 32-byte strides, joined with the length at the
/// end: about four times the speed where a single chain's multiplies wait on each other (a GB
/// of kept int8 weights is checked at every load). Not the same values as `checksum`.
pub fn checksum_wide(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut lanes = [0xcbf2_9ce4_8422_2325u64; 4];
    let mut strides = bytes.chunks_exact(32);
    for s in &mut strides {
        for (i, h) in lanes.iter_mut().enumerate() {
            *h = (*h ^ u64::from_le_bytes(s[8 * i..8 * i + 8].try_into().unwrap())).wrapping_mul(PRIME);
        }
    }
    let tail = checksum(strides.remainder());
    lanes.iter().fold(tail ^ bytes.len() as u64, |h, &l| (h ^ l).wrapping_mul(PRIME).rotate_left(29))
}

/// Bytes free for this user on the file system holding `dir` (or its nearest existing
/// parent); None where that cannot be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let dir = dir.ancestors().find(|d| d.exists())?;
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs fills the struct it is given from a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// A folder of llm-npu's own beside a model (`<folder>/llm-npu-<what>/` for an HF folder,
/// `<file>.llm-npu-<what>/` beside a single-file model); not created here.
pub fn beside_model_dir(model: &Path, what: &str) -> PathBuf {
    let file = beside_model(model, what);
    file.with_extension("")
}

/// Gives the calling thread the lowest CPU priority (nice 19), for work that may wait for any
/// other. Linux only, where a nice value is a thread's own (elsewhere it would be the process's).
pub fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call with integer arguments; a failure leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_change_with_any_byte_and_with_the_length() {
        let bytes: Vec<u8> = (0..203u32).map(|i| (i * 37 % 251) as u8).collect();
        for sum in [checksum, checksum_wide] {
            let base = sum(&bytes);
            for at in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[at] ^= 0x10;
                assert_ne!(sum(&flipped), base, "byte {at}");
            }
            assert_ne!(sum(&bytes[..bytes.len() - 1]), base, "a cut");
        }
        // Trailing zeros within the last word: only the wide sum holds the length.
        assert_ne!(checksum_wide(&[&bytes[..], &[0, 0, 0]].concat()), checksum_wide(&bytes));
        assert_eq!(checksum(&[&bytes[..], &[0, 0, 0]].concat()), checksum(&bytes));
    }
}
