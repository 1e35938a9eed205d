//! File formats: bytes in, typed tensors and metadata out. Nothing outside this module knows a
//! file layout.


pub mod gguf;
pub mod llama2c;
pub mod safetensors;

use std::path::Path;

use crate::error::{Error, Result};

/// A model file's bytes as the readers see them: memory-mapped. Under Miri, which cannot map
/// files, the file is read into (8-byte aligned) memory instead, so the readers and the tensor
/// views over their bytes run there unchanged.
#[cfg(not(miri))]
pub type FileBytes = memmap2::Mmap;

/// Maps a model file read-only, with its pages faulted in up front (MAP_POPULATE): one pass of
/// the kernel instead of a page fault per 4 KiB on first use, which for a 4 GiB f32 model costs
/// seconds inside the first forward pass.
#[cfg(not(miri))]
pub(crate) fn map_file(path: &Path) -> Result<FileBytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is mapped read-only; like every mmap-based loader we assume it is not
    // truncated or rewritten while the model is loaded.
    unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))
}

#[cfg(miri)]
pub struct FileBytes {
    words: Vec<u64>,
    len: usize,
}

#[cfg(miri)]
impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}

#[cfg(miri)]
pub(crate) fn map_file(path: &Path) -> Result<FileBytes> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: `words` has room for every byte.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len()) };
    Ok(FileBytes { words, len: bytes.len() })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::model::{load, LoadOptions};

    fn in_repo(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// Where a file cut short is worth testing: every early byte of the header, then spread out.
    fn cut_points(len: usize) -> Vec<usize> {
        let mut at: Vec<usize> = (0..len.min(40)).collect();
        let mut p = 40;
        while p < len {
            at.push(p);
            p = p * 3 / 2 + 7;
        }
        at.extend([len / 2, len - 1]);
        if cfg!(miri) {
            // Miri interprets every load (minutes for all of them): every third cut there.
            at = at.into_iter().step_by(3).collect();
        }
        at.retain(|&p| p < len);
        at.sort();
        at.dedup();
        at
    }

    /// Each reader (GGUF, a safetensors folder, llama2.c) loads a model file of ours whole, and
    /// gives a one-line error, never a panic, for the same file cut short at each point of
    /// `cut_points`. Small enough for Miri, which checks the unsafe views of the files' bytes
    /// (`tools/miri.sh`).
    #[test]
    fn readers_load_whole_files_and_give_one_line_errors_for_cut_ones() {
        let scratch = std::env::temp_dir().join(format!("llm-npu-readers-{}", std::process::id()));
        let stories = in_repo("../shared/models/stories260K");
        // (what, the file that is cut, the files beside it, the path handed to `load`, its tokenizer)
        let mut cases = vec![
            ("gguf", in_repo("tests/fixtures/gguf/llama-gqa-q8_0.gguf"), vec![], "llama-gqa-q8_0.gguf", None),
            ("safetensors", in_repo("tests/fixtures/llama-gqa/model.safetensors"), vec![in_repo("tests/fixtures/llama-gqa/config.json")], ".", None),
        ];
        if stories.exists() {
            cases.push(("llama2.c", stories.join("stories260K.reconstructed.bin"), vec![], "stories260K.reconstructed.bin", Some(stories.join("t260.bin"))));
        } else {
            eprintln!("SKIPPED the llama2.c reader: {} is absent", stories.display());
        }
        for (what, file, beside, load_path, tokenizer) in cases {
            let dir = scratch.join(what);
            std::fs::create_dir_all(&dir).unwrap();
            for b in &beside {
                std::fs::write(dir.join(b.file_name().unwrap()), std::fs::read(b).unwrap()).unwrap();
            }
            let bytes = std::fs::read(&file).unwrap();
            let target = dir.join(file.file_name().unwrap());
            let opts = LoadOptions { tokenizer: tokenizer.as_deref(), ..Default::default() };
            std::fs::write(&target, &bytes).unwrap();
            if let Err(e) = load(&dir.join(load_path), &opts) {
                panic!("{what}: the whole file does not load: {e}");
            }
            let cuts = cut_points(bytes.len());
            for &len in &cuts {
                std::fs::write(&target, &bytes[..len]).unwrap();
                match load(&dir.join(load_path), &opts) {
                    Ok(_) => panic!("{what} cut to {len} of {} bytes loaded", bytes.len()),
                    Err(e) => assert!(!e.to_string().contains('\n'), "{what} cut to {len}: the error has several lines: {e}"),
                }
            }
            eprintln!("{what}: loads whole, {} cut lengths rejected", cuts.len());
        }
        std::fs::remove_dir_all(&scratch).ok();
    }
}
