//! The dataset a cache was made from, as its manifest records it: every file's rows, bytes
//! and SHA-256, so stage two and `eval` can tell the same data from other data.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::integrity::{sha256_bytes, sha256_file};

/// The dataset a cache was made from: one file, or several read as one (a directory or a
/// glob, its files sorted by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// The file, directory or glob's name as given (informational).
    pub file: String,
    pub format: String,
    /// One file: its SHA-256. Several: the SHA-256 of their `sha256 rows` lines, in order.
    pub sha256: String,
    pub rows: u64,
    /// Several files: each, in reading order (rows are numbered across them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DataFileInfo>,
}

/// One file of a dataset of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFileInfo {
    /// File name (without its directory, so the dataset may move).
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl DatasetInfo {
    /// Hash and count a dataset: a file, a directory or a glob (see [`crate::data::resolve`]).
    pub fn of(spec: &Path) -> Result<DatasetInfo> {
        let format = crate::data::dataset_format(spec)?.name().to_string();
        let paths = crate::data::resolve(spec)?;
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
        // One file is hashed as itself however it was named (the file, its directory, a glob).
        if let [path] = paths.as_slice() {
            return Ok(DatasetInfo {
                file: name(path),
                format,
                sha256: sha256_file(path)?,
                rows: crate::data::file_rows(path)?,
                files: vec![],
            });
        }
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            let bytes = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
            files.push(DataFileInfo { file: name(p), rows: crate::data::file_rows(p)?, bytes, sha256: sha256_file(p)? });
        }
        // The content in order identifies the dataset; file names do not (it may be renamed).
        let listing: String = files.iter().map(|f| format!("{} {}\n", f.sha256, f.rows)).collect();
        Ok(DatasetInfo {
            file: name(spec),
            format,
            sha256: sha256_bytes(listing.as_bytes()),
            rows: files.iter().map(|f| f.rows).sum(),
            files,
        })
    }

    /// `None` when `self` (the data given now) is the dataset `recorded` describes; else
    /// what differs, naming the file.
    pub fn difference(&self, recorded: &DatasetInfo) -> Option<String> {
        if self.sha256 == recorded.sha256 && self.rows == recorded.rows {
            return None;
        }
        let short = |h: &str| crate::integrity::short(h).to_string();
        let listed = |d: &DatasetInfo| -> Vec<DataFileInfo> {
            if d.files.is_empty() {
                vec![DataFileInfo { file: d.file.clone(), rows: d.rows, bytes: 0, sha256: d.sha256.clone() }]
            } else {
                d.files.clone()
            }
        };
        let (now, then) = (listed(self), listed(recorded));
        let same = |a: &DataFileInfo, b: &DataFileInfo| a.sha256 == b.sha256 && a.rows == b.rows;
        if now.len() == then.len() && now.iter().zip(&then).all(|(a, b)| same(a, b)) {
            return None; // the same files in the same order, named differently
        }
        if now.len() != then.len() {
            return Some(format!(
                "the data has {} file(s) ({}), the manifest records {} ({})",
                now.len(),
                now.iter().map(|f| f.file.as_str()).collect::<Vec<_>>().join(", "),
                then.len(),
                then.iter().map(|f| f.file.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        for (a, b) in now.iter().zip(&then) {
            if !same(a, b) {
                return Some(format!(
                    "{} has sha256 {} ({} rows), the manifest records {} with sha256 {} ({} rows)",
                    a.file,
                    short(&a.sha256),
                    a.rows,
                    b.file,
                    short(&b.sha256),
                    b.rows
                ));
            }
        }
        Some(format!("the data hashes to {}, the manifest records {}", short(&self.sha256), short(&recorded.sha256)))
    }
}
