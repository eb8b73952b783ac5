//! The manifest: the cache's self-description, written beside the shards.
//!
//! `manifest.json` exists only once a cache is complete; while `cache-teacher` runs,
//! `manifest.partial.json` records the shards finished so far (written atomically after
//! each shard), which is what a rerun resumes from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::schema::LogprobEncoding;
use crate::error::{Error, Result};

/// Version of the shard schema and manifest layout. Readers refuse other versions.
pub const SCHEMA_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// Every manifest file name (complete, partial, part) starts with this.
pub const MANIFEST_STEM: &str = "manifest";
pub const PARTIAL_MANIFEST_FILE: &str = "manifest.partial.json";
/// The teacher's tokenizer, copied into the cache so the cache is self-contained.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What the teacher predicts, which decides what a cached row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One soft label per example (`logits [batch, classes]`).
    Classification,
    /// One soft label per predicted token (`logits [batch, seq, vocab]`).
    CausalLm,
}

/// Which positions of a sequence are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Classification: one row per example.
    Example,
    /// Causal LM: only positions that predict a completion token.
    Completion,
    /// Causal LM: every position that predicts a next token.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

/// One ONNX input or output as the model declares it (`-1` = dynamic dimension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    /// How stage one fills an input (`column:NAME`, `input_ids`, `attention_mask`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherInfo {
    /// File name of the model as given (informational; the hash identifies it).
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    /// The output the soft labels come from.
    pub logits_output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    pub file: String,
    /// SHA-256 of the tokenizer.json bytes: the tokenizer fingerprint.
    pub sha256: String,
    /// Vocabulary size of the tokenizer including added tokens.
    pub vocab_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    pub file: String,
    pub format: String,
    pub sha256: String,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingInfo {
    pub logprobs: LogprobEncoding,
    /// Quantisation step in nats (`delta_u16`), 0 for `f32`.
    pub logprob_step: f64,
    /// Largest absolute error of a stored log-prob, nats.
    pub max_abs_error: f64,
    pub compression: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// File name inside the cache directory (`shard-NNNNN.parquet`, no directories).
    pub file: String,
    /// First dataset row of the shard; the shard holds rows `first_row..first_row + rows`.
    pub first_row: u64,
    pub rows: u64,
    /// Parquet rows (cached positions) in the shard.
    pub positions: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Counts gathered while caching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub rows: u64,
    pub positions: u64,
    /// Rows whose token sequence was cut to `max_seq_len`.
    pub truncated_rows: u64,
    /// Rows that produced no cached position (e.g. an empty completion).
    pub rows_without_positions: u64,
}

/// Which slice of a sharded capture (`cache-teacher --shard I/N`) a part manifest covers:
/// the shards whose index `j` has `j % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartInfo {
    pub index: usize,
    pub count: usize,
}

impl PartInfo {
    /// `manifest.part-I-of-N.json`, and with `.partial` while the part runs.
    pub fn file_name(&self, partial: bool) -> String {
        format!("manifest.part-{}-of-{}{}.json", self.index, self.count, if partial { ".partial" } else { "" })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub complete: bool,
    /// Set on the manifest of one part of a sharded capture; `distill merge` combines parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
    pub tool: ToolInfo,
    pub task: Task,
    pub teacher: TeacherInfo,
    pub tokenizer: Option<TokenizerInfo>,
    /// True class count / vocabulary size: the last dimension of the teacher's logits.
    pub vocab_size: usize,
    pub top_k: usize,
    pub temperature: f32,
    pub positions: Positions,
    pub encoding: EncodingInfo,
    pub dataset: DatasetInfo,
    /// Text columns and tokenization (token models); stage two tokenizes the same way.
    pub text: Option<crate::text::TextColumns>,
    /// Numeric dataset columns fed to the teacher (numeric models), in input order.
    pub features: Vec<String>,
    /// Hard-label column of classification data.
    pub label_column: Option<String>,
    pub rows_per_shard: u64,
    /// SHA-256 over everything that decides the cache's content; a rerun resumes only
    /// into a cache with the same fingerprint.
    pub fingerprint: String,
    /// The resolved settings that produced the cache.
    pub settings: serde_json::Value,
    /// The command line that produced the cache.
    pub command: Vec<String>,
    pub totals: Totals,
    pub shards: Vec<ShardInfo>,
    /// SHA-256 of this manifest's JSON with `checksum` set to "": a hand edit that does not
    /// recompute it is detected.
    #[serde(default)]
    pub checksum: String,
}

impl Manifest {
    /// Read and validate `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            let has_parts = std::fs::read_dir(dir)
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("manifest.part-")))
                .unwrap_or(false);
            if has_parts {
                return Err(Error::cache(
                    dir,
                    "holds part manifests of a sharded capture (cache-teacher --shard I/N) but no manifest.json; \
                     combine the parts with `distill merge --out DIR PART_DIR...`",
                ));
            }
            if dir.join(PARTIAL_MANIFEST_FILE).exists() {
                return Err(Error::cache(
                    dir,
                    "incomplete cache: cache-teacher did not finish (manifest.partial.json \
                     but no manifest.json); rerun the same cache-teacher command to resume it",
                ));
            }
            return Err(Error::cache(dir, "no manifest.json: not a distill cache directory"));
        }
        Self::read_file(&path)
    }

    /// Read and validate one manifest file (complete or partial).
    pub fn read_file(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::cache(path, format!("manifest is not valid: {e}")))?;
        let want = manifest.compute_checksum();
        if manifest.checksum != want {
            return Err(Error::cache(
                path,
                format!(
                    "manifest checksum mismatch (records {:?}, content hashes to {want}): the manifest was edited or damaged",
                    manifest.checksum
                ),
            ));
        }
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Structural checks that keep an untrusted manifest from steering the reader:
    /// known schema version, shard file names that cannot leave the directory, shards
    /// that tile the dataset rows in order, totals that add up.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::cache(path, m));
        if self.schema_version != SCHEMA_VERSION {
            return bad(format!(
                "schema_version {} is not supported (this distill reads {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.top_k == 0 || self.top_k > self.vocab_size {
            return bad(format!("top_k {} must be in 1..={} (vocab_size)", self.top_k, self.vocab_size));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be > 0", self.temperature));
        }
        if let Some(part) = self.part {
            return self.validate_part(path, part);
        }
        let mut next_row = 0u64;
        let mut positions = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            if !is_shard_file_name(&shard.file) {
                return bad(format!(
                    "shard {i} file {:?} is not a plain shard-NNNNN.parquet name",
                    shard.file
                ));
            }
            if shard.first_row != next_row {
                return bad(format!(
                    "shard {} starts at row {} but the previous shard ended at row {next_row}",
                    shard.file, shard.first_row
                ));
            }
            next_row = shard.first_row.checked_add(shard.rows).ok_or_else(|| {
                Error::cache(path, format!("shard {} row count overflows", shard.file))
            })?;
            positions = positions.saturating_add(shard.positions);
        }
        if self.complete {
            if next_row != self.dataset.rows || next_row != self.totals.rows {
                return bad(format!(
                    "shards cover {next_row} rows but the dataset has {} (totals say {})",
                    self.dataset.rows, self.totals.rows
                ));
            }
            if positions != self.totals.positions {
                return bad(format!(
                    "shards hold {positions} positions but totals say {}",
                    self.totals.positions
                ));
            }
        }
        Ok(())
    }

    /// A part manifest holds the shards `j` with `j % count == index`, each at row
    /// `j * rows_per_shard`, in increasing order.
    fn validate_part(&self, path: &Path, part: PartInfo) -> Result<()> {
        let bad = |m: String| Err(Error::cache(path, m));
        if part.count == 0 || part.index >= part.count {
            return bad(format!("part {}/{} is not a valid slice", part.index, part.count));
        }
        let mut last: Option<usize> = None;
        let (mut rows, mut positions) = (0u64, 0u64);
        for shard in &self.shards {
            let Some(j) = shard_index(&shard.file) else {
                return bad(format!("shard file {:?} is not a plain shard-NNNNN.parquet name", shard.file));
            };
            if j % part.count != part.index || last.is_some_and(|l| j <= l) {
                return bad(format!("shard {} does not belong to part {}/{} in order", shard.file, part.index, part.count));
            }
            if Some(shard.first_row) != (j as u64).checked_mul(self.rows_per_shard) || shard.rows > self.rows_per_shard {
                return bad(format!("shard {} does not start at row {} x {}", shard.file, j, self.rows_per_shard));
            }
            last = Some(j);
            rows = rows.saturating_add(shard.rows);
            positions = positions.saturating_add(shard.positions);
        }
        if self.complete && (rows != self.totals.rows || positions != self.totals.positions) {
            return bad(format!("part shards hold {rows} rows / {positions} positions but totals say {} / {}", self.totals.rows, self.totals.positions));
        }
        Ok(())
    }

    /// SHA-256 of the canonical JSON of this manifest with an empty `checksum`.
    pub fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum.clear();
        sha256_bytes(&serde_json::to_vec(&copy).expect("manifest serialises"))
    }

    /// Write to `dir/name` atomically (temporary file, fsync, rename, fsync dir), with a
    /// fresh checksum.
    pub fn write_atomic(&self, dir: &Path, name: &str) -> Result<()> {
        let mut m = self.clone();
        m.checksum = m.compute_checksum();
        let json = serde_json::to_vec_pretty(&m).expect("manifest serialises");
        write_atomic(&dir.join(name), &json)
    }
}

impl Manifest {
    /// A minimal complete manifest around one shard, for benchmarks and tests of the reader.
    #[doc(hidden)]
    pub fn synthetic_for_bench(top_k: usize, vocab_size: usize, encoding: LogprobEncoding, step: f64, shard: ShardInfo) -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            complete: true,
            part: None,
            tool: ToolInfo { name: "distill".into(), version: env!("CARGO_PKG_VERSION").into() },
            task: Task::CausalLm,
            teacher: TeacherInfo { file: "synthetic".into(), sha256: String::new(), bytes: 0, inputs: vec![], outputs: vec![], logits_output: "logits".into() },
            tokenizer: None,
            vocab_size,
            top_k,
            temperature: 1.0,
            positions: Positions::All,
            encoding: EncodingInfo { logprobs: encoding, logprob_step: step, max_abs_error: step / 2.0, compression: "zstd".into() },
            dataset: DatasetInfo { file: "synthetic".into(), format: "none".into(), sha256: String::new(), rows: shard.rows },
            text: None,
            features: vec![],
            label_column: None,
            rows_per_shard: shard.rows,
            fingerprint: String::new(),
            settings: serde_json::Value::Null,
            command: vec![],
            totals: Totals { rows: shard.rows, positions: shard.positions, ..Default::default() },
            shards: vec![shard],
            checksum: String::new(),
        }
    }
}

/// `shard-` + digits + `.parquet`, nothing else (no separators, no `..`).
pub fn is_shard_file_name(name: &str) -> bool {
    name.strip_prefix("shard-")
        .and_then(|s| s.strip_suffix(".parquet"))
        .is_some_and(|d| !d.is_empty() && d.len() <= 9 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The index `j` of `shard-j.parquet`.
pub fn shard_index(name: &str) -> Option<usize> {
    if !is_shard_file_name(name) {
        return None;
    }
    name.strip_prefix("shard-")?.strip_suffix(".parquet")?.parse().ok()
}

pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.parquet")
}

/// Write `bytes` to `path` so that a reader sees either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = temporary_name(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The hidden temporary name a file is written under before it is renamed into place.
pub fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    d.sync_all().map_err(|e| Error::io(dir, e))
}

/// SHA-256 of a file, hex, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_cannot_escape_the_directory() {
        assert!(is_shard_file_name("shard-00000.parquet"));
        assert!(!is_shard_file_name("../shard-00000.parquet"));
        assert!(!is_shard_file_name("shard-/../x.parquet"));
        assert!(!is_shard_file_name("/etc/shard-1.parquet"));
        assert!(!is_shard_file_name("shard-.parquet"));
        assert!(!is_shard_file_name("shard-1.parquet.partial"));
    }
}
