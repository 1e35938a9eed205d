//! Typed errors of the library. Every error that comes from a file names the file, and where it
//! makes sense the field or tensor, so the CLI can print one line that tells the user what to fix.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // `err` is not named `source` on purpose: the message already includes it, and a source
    // would make error chains (anyhow's "{:#}") print it twice.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// The file's structure is broken: truncated, bad magic, impossible sizes.
    #[error("{}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },

    /// A named field (config key, GGUF metadata key, tensor) is missing or has a bad value.
    #[error("{}: {field}: {msg}", path.display())]
    Field { path: PathBuf, field: String, msg: String },

    #[error("{}: unsupported architecture '{arch}' (supported: {supported})", path.display())]
    UnsupportedArch { path: PathBuf, arch: String, supported: String },

    /// Bad input from the user that is not a file problem (token ids, prompt length, options).
    #[error("{0}")]
    Input(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A runtime library or device an accelerator needs is missing or refused the work.
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), err }
    }
    pub fn corrupt(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Corrupt { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn field(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Field { path: path.as_ref().to_path_buf(), field: field.into(), msg: msg.into() }
    }
}
