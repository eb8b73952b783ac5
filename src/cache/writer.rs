//! Stage one's side of the cache: soft labels in, zstd Parquet shards out.
//!
//! A shard is built in memory (bounded by `rows_per_shard`), written under a hidden
//! temporary name, fsynced, and renamed into place; its checksum is taken from the bytes
//! as they are written. A shard file that exists under its final name is complete.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float16Builder, Float32Builder, Int64Builder, ListBuilder, RecordBatch, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use crate::cache::manifest::{ShardInfo, ShardStamp, shard_file_name, sync_dir, temporary_name};
use crate::cache::schema::SoftLabel;
use crate::cache::schema::{self, LogprobEncoding};
use crate::error::{Error, Result};

/// zstd level of the shards: level 9 measured ~6% smaller than 3 on the LM cache at a
/// cost that is small next to running the teacher.
pub const ZSTD_LEVEL: i32 = 9;

/// Parquet rows (positions) per row group: the unit a reader decodes at a time.
const ROW_GROUP_POSITIONS: usize = 32 * 1024;

/// Accumulates the soft labels of one shard.
pub struct ShardBuilder {
    encoding: LogprobEncoding,
    step: f64,
    row: UInt64Builder,
    position: UInt32Builder,
    hard_label: Int64Builder,
    hard_label_logprob: Float32Builder,
    top_ids: ListBuilder<UInt32Builder>,
    top1: Float32Builder,
    deltas: ListBuilder<UInt16Builder>,
    logprobs: ListBuilder<Float32Builder>,
    tail: Float32Builder,
    entropy: Float32Builder,
    /// One column per stored hidden state: (column name, width, values).
    hidden: Vec<(String, usize, ListBuilder<Float16Builder>)>,
    scratch: Vec<u16>,
    positions: u64,
    /// (row, position) of each pushed entry: pushes may come in any order (batches of rows
    /// grouped by length); the shard is written in dataset order.
    keys: Vec<(u64, u32)>,
}

fn item(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, false))
}

impl ShardBuilder {
    pub fn new(encoding: LogprobEncoding, step: f64) -> Self {
        Self::with_hidden(encoding, step, &[])
    }

    /// A builder whose shards also hold the hidden states `hidden` describes.
    pub fn with_hidden(encoding: LogprobEncoding, step: f64, hidden: &[crate::cache::manifest::HiddenStateInfo]) -> Self {
        ShardBuilder {
            encoding,
            step,
            row: UInt64Builder::new(),
            position: UInt32Builder::new(),
            hard_label: Int64Builder::new(),
            hard_label_logprob: Float32Builder::new(),
            top_ids: ListBuilder::new(UInt32Builder::new()).with_field(item(DataType::UInt32)),
            top1: Float32Builder::new(),
            deltas: ListBuilder::new(UInt16Builder::new()).with_field(item(DataType::UInt16)),
            logprobs: ListBuilder::new(Float32Builder::new()).with_field(item(DataType::Float32)),
            tail: Float32Builder::new(),
            entropy: Float32Builder::new(),
            hidden: hidden
                .iter()
                .map(|h| (h.column.clone(), h.dim, ListBuilder::new(Float16Builder::new()).with_field(item(DataType::Float16))))
                .collect(),
            scratch: Vec::new(),
            positions: 0,
            keys: Vec::new(),
        }
    }

    /// Positions buffered so far.
    pub fn positions(&self) -> u64 {
        self.positions
    }

    /// Add one cached position; `hard_label` comes with the teacher's log-prob of it.
    pub fn push(&mut self, row: u64, position: u32, hard_label: Option<(i64, f32)>, soft: &SoftLabel) {
        self.push_with_hidden(row, position, hard_label, soft, &[]);
    }

    /// As [`ShardBuilder::push`], with the position's hidden states (one slice of the
    /// column's width per column, in the builder's order, rounded to f16 here).
    pub fn push_with_hidden(&mut self, row: u64, position: u32, hard_label: Option<(i64, f32)>, soft: &SoftLabel, hidden: &[&[f32]]) {
        assert_eq!(hidden.len(), self.hidden.len(), "one slice per hidden-state column");
        for ((_, dim, column), values) in self.hidden.iter_mut().zip(hidden) {
            assert_eq!(values.len(), *dim, "a hidden state has the column's width");
            column.values().extend(values.iter().map(|&v| Some(half::f16::from_f32(v))));
            column.append(true);
        }
        self.keys.push((row, position));
        self.row.append_value(row);
        self.position.append_value(position);
        self.hard_label.append_option(hard_label.map(|h| h.0));
        self.hard_label_logprob.append_option(hard_label.map(|h| h.1));
        self.top_ids.values().append_slice(&soft.ids);
        self.top_ids.append(true);
        self.top1.append_value(soft.logprobs[0]);
        match self.encoding {
            LogprobEncoding::DeltaU16 => {
                schema::encode_deltas(&soft.logprobs, self.step, &mut self.scratch);
                self.deltas.values().append_slice(&self.scratch);
                self.deltas.append(true);
            }
            LogprobEncoding::F32 => {
                self.logprobs.values().append_slice(&soft.logprobs);
                self.logprobs.append(true);
            }
        }
        self.tail.append_value(soft.tail_logmass);
        self.entropy.append_value(soft.entropy);
        self.positions += 1;
    }

    fn finish_batch(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.row.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.hard_label.finish()),
            Arc::new(self.hard_label_logprob.finish()),
            Arc::new(self.top_ids.finish()),
            Arc::new(self.top1.finish()),
        ];
        match self.encoding {
            LogprobEncoding::DeltaU16 => columns.push(Arc::new(self.deltas.finish())),
            LogprobEncoding::F32 => columns.push(Arc::new(self.logprobs.finish())),
        }
        columns.push(Arc::new(self.tail.finish()));
        columns.push(Arc::new(self.entropy.finish()));
        for (_, _, column) in &mut self.hidden {
            columns.push(Arc::new(column.finish()));
        }
        self.positions = 0;
        let keys = std::mem::take(&mut self.keys);
        if !keys.is_sorted() {
            let mut order: Vec<u32> = (0..keys.len() as u32).collect();
            order.sort_by_key(|&i| keys[i as usize]);
            let indices = arrow::array::UInt32Array::from(order);
            columns = columns.iter().map(|c| arrow::compute::take(c, &indices, None).expect("indices within the columns")).collect();
        }
        let names: Vec<String> = self.hidden.iter().map(|h| h.0.clone()).collect();
        RecordBatch::try_new(Arc::new(schema::shard_schema(self.encoding, &names)), columns).expect("columns match the shard schema")
    }

    /// Write the buffered positions as the shard `stamp` describes (its index, first row and
    /// rows; the stamp goes into the file's metadata) into `dir`, atomically, and reset.
    pub fn write(&mut self, dir: &Path, stamp: &ShardStamp) -> Result<ShardInfo> {
        let (index, first_row, rows) = (stamp.index, stamp.first_row, stamp.rows);
        let positions = self.positions;
        let batch = self.finish_batch();
        let file = shard_file_name(index);
        let path = dir.join(&file);
        let tmp = temporary_name(&path);
        let out = crate::untrusted::create_fresh(&tmp)?;
        let sink = HashingWriter { inner: std::io::BufWriter::with_capacity(1 << 20, out), hasher: Sha256::new(), bytes: 0 };
        let mut props = writer_properties(self.encoding, self.step);
        let stamp_json = serde_json::to_string(stamp).expect("a stamp serialises");
        props = props_with_stamp(props, stamp_json);
        let mut writer = ArrowWriter::try_new(sink, batch.schema(), Some(props)).map_err(|e| Error::parquet(&tmp, e))?;
        writer.write(&batch).map_err(|e| Error::parquet(&tmp, e))?;
        let sink = writer.into_inner().map_err(|e| Error::parquet(&tmp, e))?;
        let HashingWriter { inner, hasher, bytes } = sink;
        let file_handle = inner.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        file_handle.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file_handle);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(ShardInfo { file, first_row, rows, positions, bytes, sha256: crate::cache::manifest::hex(&hasher.finalize()) })
    }
}

/// Per-column encodings chosen by measurement on the LM cache (docs/benchmarks.md, "Cache size"):
/// ids and deltas are dictionary-encoded under zstd (1.36 + 0.72 bytes per entry at k = 64
/// against 1.54 + 0.85 for PLAIN), row/position indices are delta-coded, the float32
/// columns use BYTE_STREAM_SPLIT (DuckDB reads it on FLOAT; it rejects it only on FLOAT16).
pub fn writer_properties(encoding: LogprobEncoding, step: f64) -> WriterProperties {
    let col = |name: &str| ColumnPath::from(name);
    let list = |name: &str| ColumnPath::from(vec![name.to_string(), "list".into(), "item".into()]);
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_POSITIONS))
        .set_created_by(format!("distill {}", env!("CARGO_PKG_VERSION")))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_dictionary_enabled(false)
        .set_column_encoding(col(schema::ROW), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(col(schema::POSITION), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(list(schema::TOP_IDS), true)
        .set_column_encoding(col(schema::TOP1_LOGPROB), Encoding::BYTE_STREAM_SPLIT)
        .set_column_encoding(col(schema::HARD_LABEL_LOGPROB), Encoding::BYTE_STREAM_SPLIT)
        .set_column_encoding(col(schema::TAIL_LOGMASS), Encoding::BYTE_STREAM_SPLIT)
        .set_column_encoding(col(schema::ENTROPY), Encoding::BYTE_STREAM_SPLIT)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(schema::STEP_METADATA_KEY.to_string(), format!("{step}")),
            KeyValue::new("distill.logprob_encoding".to_string(), encoding.name().to_string()),
        ]));
    if encoding == LogprobEncoding::DeltaU16 {
        b = b.set_column_dictionary_enabled(list(schema::LOGPROB_DELTAS), true);
    }
    b.build()
}

/// `props` with the shard's stamp added to its key-value metadata.
fn props_with_stamp(props: WriterProperties, stamp: String) -> WriterProperties {
    let mut kv = props.key_value_metadata().cloned().unwrap_or_default();
    kv.push(KeyValue::new(schema::STAMP_METADATA_KEY.to_string(), stamp));
    props.into_builder().set_key_value_metadata(Some(kv)).build()
}

/// Passes bytes through while hashing them, so a shard's checksum costs no second read.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
