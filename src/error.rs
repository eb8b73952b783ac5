//! One error type for the whole library.
//!
//! Every variant names what was wrong and where: the file, the column, the row, the
//! shape that was found and the one that was expected. The binary prints the chain.

use std::path::PathBuf;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `distill`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A setting is missing or out of range; the message names the key.
    #[error("invalid setting: {0}")]
    Config(String),

    /// `--resume` into a run directory whose run was made with other settings (a pipeline
    /// that owns the directory replaces it; a user is told what differs).
    #[error("invalid setting: {0}")]
    OtherRun(String),

    /// A pipeline file could not be parsed.
    #[error("pipeline file {path}: {message}")]
    PipelineFile { path: PathBuf, message: String },

    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    /// The teacher model could not be loaded, fed or run.
    #[error("teacher {path}: {message}")]
    Teacher { path: PathBuf, message: String },

    /// The dataset is missing a column, has a wrong type, or a bad value.
    #[error("data {path}: {message}")]
    Data { path: PathBuf, message: String },

    /// The tokenizer could not be loaded or failed on a row.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// A cache is malformed, incomplete, corrupted, or does not match what uses it.
    #[error("cache {path}: {message}")]
    Cache { path: PathBuf, message: String },

    /// Object storage (s3://, gs://, az://) could not be reached, read or written.
    #[error("object storage {url}: {message}")]
    Store { url: String, message: String },

    /// A Parquet file could not be written or read.
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow array had an unexpected layout.
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }
    pub(crate) fn teacher(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Teacher { path: path.into(), message: message.into() }
    }
    pub(crate) fn cache(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Cache { path: path.into(), message: message.into() }
    }
    pub(crate) fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet { path: path.into(), source }
    }
    pub(crate) fn arrow(path: impl Into<PathBuf>, source: arrow::error::ArrowError) -> Self {
        Error::Arrow { path: path.into(), source }
    }
}
