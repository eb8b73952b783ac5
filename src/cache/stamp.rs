//! A shard's stamp (its own record of the cache it belongs to) and shard file names.

use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::schema::LogprobEncoding;

/// What a shard says about itself, in its Parquet key-value metadata
/// ([`crate::cache::schema::STAMP_METADATA_KEY`], JSON): the cache it belongs to, its place
/// in it and how it is to be read. Readers and `verify` compare it with the manifest, so a
/// shard copied from another cache, or a manifest edited (and its checksum recomputed),
/// is refused instead of used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardStamp {
    pub fingerprint: String,
    pub index: usize,
    pub first_row: u64,
    pub rows: u64,
    pub top_k: usize,
    pub vocab_size: usize,
    pub temperature: f32,
    pub logprobs: LogprobEncoding,
    pub logprob_step: f64,
    pub features: Vec<String>,
    pub label_column: Option<String>,
}

impl ShardStamp {
    /// The stamp shard `index` (rows `first_row .. first_row + rows`) of `m` carries.
    pub fn of(m: &Manifest, index: usize, first_row: u64, rows: u64) -> ShardStamp {
        ShardStamp {
            fingerprint: m.fingerprint.clone(),
            index,
            first_row,
            rows,
            top_k: m.top_k,
            vocab_size: m.vocab_size,
            temperature: m.temperature,
            logprobs: m.encoding.logprobs,
            logprob_step: m.encoding.logprob_step,
            features: m.features.clone(),
            label_column: m.label_column.clone(),
        }
    }

    /// The first field in which `self` (what the shard says) differs from `expected` (what
    /// the manifest says), as `name: shard value vs manifest value`.
    pub fn difference(&self, expected: &ShardStamp) -> Option<String> {
        let (a, b) = (serde_json::to_value(self).ok()?, serde_json::to_value(expected).ok()?);
        let (a, b) = (a.as_object()?, b.as_object()?);
        b.iter().find(|(k, v)| a.get(*k) != Some(v)).map(|(k, v)| {
            format!("{k}: the shard says {}, the manifest {v}", a.get(k).map(|x| x.to_string()).unwrap_or_else(|| "nothing".into()))
        })
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
