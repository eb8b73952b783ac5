//! What a training run leaves beside its weights for `eval` and `predict`: `student.json`
//! (the architecture, how it reads data, what it was trained from).

use serde::{Deserialize, Serialize};

use crate::cache::{Manifest, Task};
use crate::loss::TailMode;
use crate::student::StudentArch;
use crate::text::TextColumns;

/// What the student reads from a dataset: saved beside it so `eval` reads data the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub task: Task,
    pub features: Vec<String>,
    pub label_column: Option<String>,
    pub text: Option<TextColumns>,
    /// SHA-256 of the tokenizer (copied into the run directory as tokenizer.json).
    pub tokenizer_sha256: Option<String>,
}

impl DataSpec {
    /// The data as the cache read it.
    pub fn of(m: &Manifest) -> DataSpec {
        DataSpec {
            task: m.task,
            features: m.features.clone(),
            label_column: m.label_column.clone(),
            text: m.text.clone(),
            tokenizer_sha256: m.tokenizer.as_ref().map(|t| t.sha256.clone()),
        }
    }
}

/// `student.json`: everything needed to rebuild and use the trained student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentFile {
    pub arch: StudentArch,
    pub data: DataSpec,
    /// Fingerprint of the cache it was trained from.
    pub cache_fingerprint: String,
    pub alpha: f32,
    pub temperature: f32,
    pub tail: TailMode,
    /// The cache's class count / vocabulary when the student's is larger (a padded
    /// embedding): logits are sliced to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_vocab: Option<usize>,
}
