//! What `generate` writes: the generated dataset (one Parquet part per cache shard while
//! the run goes, one file at the end) and the cache shards of the generated positions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Builder, ListBuilder, RecordBatch, StringBuilder, UInt32Builder, UInt64Builder};
use arrow::datatypes::{DataType, Field as ArrowField, Schema};

use crate::cache::ShardBuilder;
use crate::cache::manifest::{Manifest, ShardInfo, ShardStamp};
use crate::config::COMPLETION_LOGPROBS;
use crate::error::{Error, Result};
use crate::text::Tokenizer;

use super::decode::Sequence;

/// The part file of shard `index` in `dir`.
pub(super) fn part_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("part-{index:05}.parquet"))
}

fn ids_field() -> DataType {
    DataType::List(Arc::new(ArrowField::new("item", DataType::UInt32, false)))
}

/// The dataset's columns; a student's generation adds `completion_logprobs`.
fn schema(logprobs: bool) -> Schema {
    let mut fields = vec![
        ArrowField::new("prompt", DataType::Utf8, false),
        ArrowField::new("completion", DataType::Utf8, false),
        ArrowField::new("prompt_ids", ids_field(), false),
        ArrowField::new("completion_ids", ids_field(), false),
        ArrowField::new("stop_reason", DataType::Utf8, false),
        ArrowField::new("row", DataType::UInt64, false),
        ArrowField::new("sample", DataType::UInt32, false),
    ];
    if logprobs {
        let item = Arc::new(ArrowField::new("item", DataType::Float32, false));
        fields.push(ArrowField::new(COMPLETION_LOGPROBS, DataType::List(item), false));
    }
    Schema::new(fields)
}

fn properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(3).expect("valid level")))
        .build()
}

/// One part of the generated dataset: prompt (the text, or the rendered conversation),
/// completion (the generated tokens decoded, without the end token), prompt_ids (as fed),
/// completion_ids (as generated, with the end token), stop_reason (`eos` or `length`), row,
/// sample, and with `logprobs` the generator's log-prob of each completion token; one row
/// per sequence, in (row, sample) order.
pub(super) fn write_part(path: &Path, seqs: &[Sequence], tok: &Tokenizer, logprobs: bool) -> Result<()> {
    let (mut prompt, mut completion, mut stop) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let list = || ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(ArrowField::new("item", DataType::UInt32, false)));
    let (mut prompt_ids, mut ids) = (list(), list());
    let (mut row, mut sample) = (UInt64Builder::new(), UInt32Builder::new());
    let mut lps = ListBuilder::new(Float32Builder::new()).with_field(Arc::new(ArrowField::new("item", DataType::Float32, false)));
    for s in seqs {
        lps.values().append_slice(&s.logprobs);
        lps.append(true);
        let text_ids: &[u32] = if s.done == Some("eos") { &s.generated[..s.generated.len() - 1] } else { &s.generated };
        let text = tok.inner.decode(text_ids, true).map_err(|e| Error::Tokenizer {
            path: tok.path.clone(),
            message: format!("row {}: cannot decode the completion: {e}", s.row),
        })?;
        prompt.append_value(&s.prompt_text);
        completion.append_value(text);
        prompt_ids.values().append_slice(&s.prompt);
        prompt_ids.append(true);
        ids.values().append_slice(&s.generated);
        ids.append(true);
        stop.append_value(s.done.unwrap_or("length"));
        row.append_value(s.row);
        sample.append_value(s.sample);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(prompt.finish()),
        Arc::new(completion.finish()),
        Arc::new(prompt_ids.finish()),
        Arc::new(ids.finish()),
        Arc::new(stop.finish()),
        Arc::new(row.finish()),
        Arc::new(sample.finish()),
    ];
    if logprobs {
        columns.push(Arc::new(lps.finish()));
    }
    let batch = RecordBatch::try_new(Arc::new(schema(logprobs)), columns).expect("columns match the schema");
    write_batches(path, &[batch], logprobs)
}

fn write_batches(path: &Path, batches: &[RecordBatch], logprobs: bool) -> Result<()> {
    let mut bytes = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, Arc::new(schema(logprobs)), Some(properties()))
        .map_err(|e| Error::parquet(path, e))?;
    for b in batches {
        w.write(b).map_err(|e| Error::parquet(path, e))?;
    }
    w.close().map_err(|e| Error::parquet(path, e))?;
    crate::integrity::write_atomic(path, &bytes)
}

/// The parts, in order, as one file at `out` (written atomically); returns how many
/// sequences stopped at the end-of-sequence token, the sequences and the tokens generated.
pub(super) fn assemble(parts: &[PathBuf], out: &Path, logprobs: bool) -> Result<(u64, u64, u64)> {
    let mut batches = Vec::new();
    for p in parts {
        let (file, _) = crate::untrusted::open(p, crate::untrusted::Cap::Weights)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| Error::parquet(p, e))?;
        for b in reader {
            batches.push(b.map_err(|e| Error::data(p, e.to_string()))?);
        }
    }
    let batch = arrow::compute::concat_batches(&Arc::new(schema(logprobs)), &batches).map_err(|e| Error::data(out, e.to_string()))?;
    let stop = batch.column(4).as_any().downcast_ref::<arrow::array::StringArray>().expect("stop_reason is a string column");
    let eos = stop.iter().filter(|s| *s == Some("eos")).count() as u64;
    let ids = batch.column(3).as_any().downcast_ref::<arrow::array::ListArray>().expect("completion_ids is a list column");
    let tokens = ids.values().len() as u64;
    write_batches(out, std::slice::from_ref(&batch), logprobs)?;
    Ok((eos, batch.num_rows() as u64, tokens))
}

/// Cache shard `index` of the sequences `seqs` (dataset rows from `first_row`): each
/// generated token's soft label at its position (the prompt's length - 1 + its index),
/// with the token as the hard label.
pub(super) fn write_shard(dir: &Path, man: &Manifest, index: usize, first_row: u64, seqs: &[Sequence]) -> Result<ShardInfo> {
    let mut builder = ShardBuilder::new(man.encoding.logprobs, man.encoding.logprob_step);
    for (i, s) in seqs.iter().enumerate() {
        for (j, (token, (soft, logprob))) in s.generated.iter().zip(&s.labels).enumerate() {
            builder.push(first_row + i as u64, (s.prompt.len() - 1 + j) as u32, Some((*token as i64, *logprob)), soft);
        }
    }
    builder.write(dir, &ShardStamp::of(man, index, first_row, seqs.len() as u64))
}
