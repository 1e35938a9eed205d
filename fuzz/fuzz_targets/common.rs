//! Shared by the targets: the fuzz input as a file, where the readers expect one.
use std::path::PathBuf;

/// A directory of this process's own under /dev/shm (memory, not disk).
pub fn scratch() -> PathBuf {
    let d = PathBuf::from(format!("/dev/shm/llm-npu-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny llama fixture's config and weights, for the targets that fuzz the other file.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama-gqa").join(name)).unwrap()
}
