//! Stage two's (and `inspect`'s) side of the cache: a directory in, verified batches of
//! decoded soft labels out, one row group at a time (memory is bounded by the row group,
//! whatever the cache size).

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float16Type, Float32Type, Int64Type, UInt16Type, UInt32Type, UInt64Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::cache::manifest::{Manifest, ShardInfo, ShardStamp, sha256_bytes, sha256_file, shard_index};
use crate::cache::schema::{self, LogprobEncoding};
use crate::error::{Error, Result};
use crate::untrusted::{self, Cap};

/// Decoded soft labels of a run of cached positions.
///
/// # Shapes
/// - `rows`, `positions`, `hard_labels`, `hard_label_logprobs`, `tail_logmass`, `entropy`: `[n]`
/// - `ids`, `logprobs`: `[n * k]`, row-major, most probable first within each position
/// - `hidden[j]`: `[n * dim_j]`, the manifest's `hidden_states[j]` at each position, for
///   the states [`CacheReader::with_hidden`] asked for (empty for the others)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SoftLabelBatch {
    pub k: usize,
    pub rows: Vec<u64>,
    pub positions: Vec<u32>,
    pub hard_labels: Vec<Option<i64>>,
    pub hard_label_logprobs: Vec<Option<f32>>,
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub tail_logmass: Vec<f32>,
    pub entropy: Vec<f32>,
    pub hidden: Vec<Vec<f32>>,
}

impl SoftLabelBatch {
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// An opened, structurally validated cache.
#[derive(Debug, Clone)]
pub struct CacheReader {
    dir: PathBuf,
    manifest: Manifest,
    /// Which of the manifest's hidden states the shards' batches decode.
    decode_hidden: Vec<bool>,
    /// A shared hold on the cache's lock while this reader (or a clone) lives.
    _hold: Option<std::sync::Arc<crate::lock::DirLock>>,
}

impl CacheReader {
    /// Open `dir`: read and validate its manifest and check that every shard file is
    /// there with the size the manifest records (checksums: [`CacheReader::verify`]).
    pub fn open(dir: &Path) -> Result<CacheReader> {
        let hold = crate::lock::read_hold(dir)?.map(std::sync::Arc::new);
        let manifest = Manifest::read(dir)?;
        let decode_hidden = vec![false; manifest.hidden_states.len()];
        let reader = CacheReader { dir: dir.to_path_buf(), manifest, decode_hidden, _hold: hold };
        for shard in &reader.manifest.shards {
            let path = reader.shard_path(shard);
            let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::cache(&path, "shard listed in manifest.json is missing"),
                _ => Error::io(&path, e),
            })?;
            untrusted::inside(&reader.dir, &shard.file, "manifest.json")?;
            if !meta.is_file() {
                return Err(Error::cache(&path, "shard listed in manifest.json is not a regular file"));
            }
            if meta.len() != shard.bytes {
                return Err(Error::cache(
                    &path,
                    format!("shard is {} bytes but manifest.json records {} (truncated or replaced)", meta.len(), shard.bytes),
                ));
            }
        }
        Ok(reader)
    }

    /// Open `dir` by its manifest alone: shards may still be arriving (a remote cache being
    /// fetched, see [`crate::store::Prefetcher`]); each is checked when it is read.
    pub fn open_lazy(dir: &Path) -> Result<CacheReader> {
        let hold = crate::lock::read_hold(dir)?.map(std::sync::Arc::new);
        let manifest = Manifest::read(dir)?;
        let decode_hidden = vec![false; manifest.hidden_states.len()];
        Ok(CacheReader { dir: dir.to_path_buf(), manifest, decode_hidden, _hold: hold })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Decode the hidden states of these teacher outputs too (by default none is decoded;
    /// every stored column is still checked against the schema). Unknown names are ignored.
    pub fn with_hidden(mut self, outputs: &[&str]) -> CacheReader {
        for (flag, h) in self.decode_hidden.iter_mut().zip(&self.manifest.hidden_states) {
            *flag = outputs.contains(&h.output.as_str());
        }
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a shard; the manifest has already checked the name is a plain file name.
    pub fn shard_path(&self, shard: &ShardInfo) -> PathBuf {
        self.dir.join(&shard.file)
    }

    /// Check every shard's SHA-256 against the manifest; the error names the first bad file.
    pub fn verify(&self, mut on_shard: impl FnMut(&ShardInfo)) -> Result<()> {
        for shard in &self.manifest.shards {
            let path = untrusted::inside(&self.dir, &shard.file, "manifest.json")?;
            let sha = sha256_file(&path)?;
            if sha != shard.sha256 {
                return Err(Error::cache(
                    &path,
                    format!("checksum mismatch: file has sha256 {sha}, manifest.json records {}", shard.sha256),
                ));
            }
            let (file, _) = untrusted::open(&path, Cap::Weights)?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(&path, e))?;
            self.check_stamp(&path, shard, builder.metadata().file_metadata().key_value_metadata())?;
            on_shard(shard);
        }
        Ok(())
    }

    /// A shard's stamp (key-value metadata) must describe the shard the manifest lists:
    /// the same cache fingerprint, place and settings. Shards written before stamps existed
    /// have none and are read as before.
    fn check_stamp(&self, path: &Path, shard: &ShardInfo, kv: Option<&Vec<parquet::file::metadata::KeyValue>>) -> Result<()> {
        let Some(text) = kv.and_then(|kv| kv.iter().find(|k| k.key == schema::STAMP_METADATA_KEY)).and_then(|k| k.value.as_ref()) else {
            return Ok(());
        };
        let stamp: ShardStamp = serde_json::from_str(text)
            .map_err(|e| Error::cache(path, format!("the shard's `{}` metadata is not valid: {e}", schema::STAMP_METADATA_KEY)))?;
        let index = shard_index(&shard.file).unwrap_or(usize::MAX);
        let expected = ShardStamp::of(&self.manifest, index, shard.first_row, shard.rows);
        match stamp.difference(&expected) {
            None => Ok(()),
            Some(why) => Err(Error::cache(
                path,
                format!(
                    "does not belong to this cache as manifest.json describes it ({why}): a shard copied from another cache, or an edited manifest"
                ),
            )),
        }
    }

    /// Stream one shard as decoded batches of at most `batch_positions` positions.
    ///
    /// The shard is read into memory once and its SHA-256 checked against the manifest
    /// before anything is decoded, so a corrupted shard is refused by name, never half-used.
    pub fn read_shard(&self, shard: &ShardInfo, batch_positions: usize) -> Result<ShardBatches> {
        let path = untrusted::inside(&self.dir, &shard.file, "manifest.json")?;
        let (_, len) = untrusted::open(&path, Cap::Weights)?;
        if len != shard.bytes {
            return Err(Error::cache(
                &path,
                format!("shard is {len} bytes but manifest.json records {} (truncated or replaced)", shard.bytes),
            ));
        }
        let bytes = untrusted::read(&path, Cap::Weights)?;
        let sha = sha256_bytes(&bytes);
        if sha != shard.sha256 {
            return Err(Error::cache(&path, format!("checksum mismatch: file has sha256 {sha}, manifest.json records {}", shard.sha256)));
        }
        let file_len = bytes.len() as i64;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).map_err(|e| Error::parquet(&path, e))?;
        // Bounds-check every column chunk before the Parquet reader uses the offsets (it
        // asserts on negative ones: found by tests/fuzz.rs).
        for (g, rg) in builder.metadata().row_groups().iter().enumerate() {
            for c in rg.columns() {
                let start = c.dictionary_page_offset().unwrap_or_else(|| c.data_page_offset());
                let len = c.compressed_size();
                if start < 0 || len < 0 || start.checked_add(len).is_none_or(|end| end > file_len) {
                    return Err(Error::cache(
                        &path,
                        format!("row group {g}, column {}: chunk at {start}+{len} lies outside the {file_len}-byte file", c.column_path()),
                    ));
                }
            }
        }
        let hidden_columns: Vec<String> = self.manifest.hidden_states.iter().map(|h| h.column.clone()).collect();
        let expected = schema::shard_schema(self.manifest.encoding.logprobs, &hidden_columns);
        let found = builder.schema();
        for field in expected.fields() {
            match found.field_with_name(field.name()) {
                Ok(f) if f.data_type() == field.data_type() => {}
                Ok(f) => {
                    return Err(Error::cache(
                        &path,
                        format!("column `{}` has type {} but the schema says {}", field.name(), f.data_type(), field.data_type()),
                    ));
                }
                Err(_) => return Err(Error::cache(&path, format!("column `{}` is missing", field.name()))),
            }
        }
        self.check_stamp(&path, shard, builder.metadata().file_metadata().key_value_metadata())?;
        let rows_in_file = builder.metadata().file_metadata().num_rows();
        if rows_in_file < 0 || rows_in_file as u64 != shard.positions {
            return Err(Error::cache(&path, format!("shard has {rows_in_file} positions but manifest.json records {}", shard.positions)));
        }
        let inner = guarded(|| builder.with_batch_size(batch_positions.max(1)).build())
            .map_err(|panic| Error::cache(&path, format!("shard could not be decoded (damaged Parquet metadata: {panic})")))?
            .map_err(|e| Error::parquet(&path, e))?;
        Ok(ShardBatches {
            path,
            inner,
            k: self.manifest.top_k,
            vocab: self.manifest.vocab_size,
            encoding: self.manifest.encoding.logprobs,
            step: self.manifest.encoding.logprob_step,
            first_row: shard.first_row,
            end_row: shard.first_row + shard.rows,
            hidden: self
                .manifest
                .hidden_states
                .iter()
                .zip(&self.decode_hidden)
                .map(|(h, &decode)| decode.then(|| (h.column.clone(), h.dim)))
                .collect(),
        })
    }
}

/// Iterator over the decoded batches of one shard.
pub struct ShardBatches {
    path: PathBuf,
    inner: ParquetRecordBatchReader,
    k: usize,
    vocab: usize,
    encoding: LogprobEncoding,
    step: f64,
    first_row: u64,
    end_row: u64,
    /// (column, width) of each stored hidden state that is decoded (`None`: not asked for).
    hidden: Vec<Option<(String, usize)>>,
}

impl Iterator for ShardBatches {
    type Item = Result<SoftLabelBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        let inner = &mut self.inner;
        let batch = match guarded(|| inner.next()) {
            Ok(b) => b?,
            Err(panic) => {
                return Some(Err(Error::cache(&self.path, format!("shard could not be decoded (damaged Parquet data: {panic})"))));
            }
        };
        Some(batch.map_err(|e| Error::arrow(&self.path, e)).and_then(|b| self.decode(&b)))
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Run `f`, turning a panic inside it into `Err(message)`. The Parquet reader asserts on some
/// malformed inputs (a dictionary-encoded page without a dictionary, found by tests/fuzz.rs);
/// a damaged shard from another team must end in an error, not an abort. While `f` runs, the
/// hook of [`install_panic_hook`] stays silent.
pub fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    QUIET_PANICS.with(|q| q.set(q.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(q.get() - 1));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string())
    })
}

/// A panic hook that keeps panics caught by [`guarded`] off stderr and reports all others
/// as the default hook does. The binary installs it first thing.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if QUIET_PANICS.with(|q| q.get()) == 0 {
            default(info);
        }
    }));
}

impl ShardBatches {
    fn decode(&self, batch: &RecordBatch) -> Result<SoftLabelBatch> {
        let bad = |m: String| Error::cache(&self.path, m);
        let col = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(format!("column `{name}` is missing")));
        let n = batch.num_rows();
        let k = self.k;
        let mut out = SoftLabelBatch { k, ..Default::default() };

        let rows = col(schema::ROW)?.as_primitive::<UInt64Type>();
        out.rows = rows.values().to_vec();
        if let Some(r) = out.rows.iter().find(|&&r| r < self.first_row || r >= self.end_row) {
            return Err(bad(format!(
                "row {r} lies outside the shard's rows {}..{} recorded in manifest.json",
                self.first_row, self.end_row
            )));
        }
        out.positions = col(schema::POSITION)?.as_primitive::<UInt32Type>().values().to_vec();
        let labels = col(schema::HARD_LABEL)?.as_primitive::<Int64Type>();
        out.hard_labels = (0..n).map(|i| labels.is_valid(i).then(|| labels.value(i))).collect();
        let label_lps = col(schema::HARD_LABEL_LOGPROB)?.as_primitive::<Float32Type>();
        out.hard_label_logprobs = (0..n).map(|i| label_lps.is_valid(i).then(|| label_lps.value(i))).collect();

        let ids = col(schema::TOP_IDS)?.as_list::<i32>();
        check_list_lengths(ids, k, schema::TOP_IDS).map_err(&bad)?;
        let id_values = ids.values().as_primitive::<UInt32Type>();
        let start = ids.value_offsets()[0] as usize;
        out.ids = id_values.values()[start..start + n * k].to_vec();
        if let Some(id) = out.ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(bad(format!("token id {id} in `top_ids` is outside the vocabulary of {}", self.vocab)));
        }

        let top1 = col(schema::TOP1_LOGPROB)?.as_primitive::<Float32Type>();
        match self.encoding {
            LogprobEncoding::DeltaU16 => {
                let deltas = col(schema::LOGPROB_DELTAS)?.as_list::<i32>();
                check_list_lengths(deltas, k, schema::LOGPROB_DELTAS).map_err(&bad)?;
                let start = deltas.value_offsets()[0] as usize;
                let values = &deltas.values().as_primitive::<UInt16Type>().values()[start..start + n * k];
                out.logprobs.reserve(n * k);
                let mut buf = Vec::with_capacity(k);
                for (i, chunk) in values.chunks_exact(k).enumerate() {
                    schema::decode_deltas(top1.value(i), chunk, self.step, &mut buf);
                    out.logprobs.extend_from_slice(&buf);
                }
            }
            LogprobEncoding::F32 => {
                let lps = col(schema::TOP_LOGPROBS)?.as_list::<i32>();
                check_list_lengths(lps, k, schema::TOP_LOGPROBS).map_err(&bad)?;
                let start = lps.value_offsets()[0] as usize;
                out.logprobs = lps.values().as_primitive::<Float32Type>().values()[start..start + n * k].to_vec();
            }
        }
        out.tail_logmass = col(schema::TAIL_LOGMASS)?.as_primitive::<Float32Type>().values().to_vec();
        out.entropy = col(schema::ENTROPY)?.as_primitive::<Float32Type>().values().to_vec();
        for wanted in &self.hidden {
            let Some((name, dim)) = wanted else {
                out.hidden.push(Vec::new());
                continue;
            };
            let list = col(name)?.as_list::<i32>();
            check_list_lengths(list, *dim, name).map_err(&bad)?;
            let start = list.value_offsets()[0] as usize;
            let values = &list.values().as_primitive::<Float16Type>().values()[start..start + n * dim];
            out.hidden.push(values.iter().map(|v| v.to_f32()).collect());
        }
        Ok(out)
    }
}

/// Every list must hold exactly `k` entries (checked before any slicing).
fn check_list_lengths(list: &arrow::array::ListArray, k: usize, name: &str) -> std::result::Result<(), String> {
    let offsets = list.value_offsets();
    for (i, w) in offsets.windows(2).enumerate() {
        let len = (w[1] - w[0]) as i64;
        if len != k as i64 {
            let expected = if name.starts_with("hidden_") { "the manifest's dim" } else { "top_k" };
            return Err(format!("`{name}` of position {i} in the batch has {len} entries, expected {expected} = {k}"));
        }
    }
    if list.null_count() > 0 {
        return Err(format!("`{name}` has null lists"));
    }
    let needed = offsets[0] as usize + list.len() * k;
    if list.values().len() < needed {
        return Err(format!("`{name}` values are shorter than its offsets"));
    }
    Ok(())
}
