//! Parquet datasets: rows of the requested columns, decoded one record batch at a time,
//! starting at any row without decoding the ones before it.

use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::error::{Error, Result};

use super::{Column, Field, Kind, Row, Rows, open};

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| Error::parquet(path, e))
}

/// The file's column names, from its schema.
pub(super) fn column_names(path: &Path) -> Result<Vec<String>> {
    Ok(builder(path)?.schema().fields().iter().map(|f| f.name().clone()).collect())
}

/// Whether column `name` is a list column.
pub(super) fn holds_lists(path: &Path, name: &str) -> Result<bool> {
    Ok(builder(path)?.schema().field_with_name(name).is_ok_and(|f| matches!(f.data_type(), DataType::List(_) | DataType::LargeList(_))))
}

/// Rows, from the footer; its row count must be the sum of its row groups'.
pub(super) fn count(path: &Path) -> Result<u64> {
    let b = builder(path)?;
    let meta = b.metadata();
    let claimed = meta.file_metadata().num_rows();
    let groups = meta.row_groups().iter().try_fold(0u64, |sum, g| u64::try_from(g.num_rows()).ok().and_then(|n| sum.checked_add(n)));
    match (u64::try_from(claimed), groups) {
        (Ok(n), Some(sum)) if n == sum => Ok(n),
        _ => Err(Error::data(
            path,
            format!(
                "the Parquet footer says {claimed} rows but its row groups hold {} (a damaged or forged footer)",
                groups.map_or("a count that does not add up".into(), |s| s.to_string())
            ),
        )),
    }
}

/// The rows of `columns` from row `first` on (rows keep their index in the file).
pub(super) fn rows_from(path: &Path, columns: &[Column], first: u64) -> Result<Rows> {
    let builder = builder(path)?;
    let arrow_schema = builder.schema().clone();
    let mut order = Vec::new();
    for c in columns {
        let (i, field) = arrow_schema.column_with_name(&c.name).expect("checked above");
        check_arrow_type(path, &c.name, field.data_type(), c.kind)?;
        order.push(i);
    }
    // Project the root columns we need (parquet leaf indices follow root order).
    let mut roots: Vec<usize> = order.clone();
    roots.sort_unstable();
    roots.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    // Row groups from the one holding `first` on, then the rows before it inside that one.
    // `start`: the first row of the first group kept (every group before it ends at or
    // before `first`).
    let (mut groups, mut start, mut end) = (Vec::new(), 0u64, 0u64);
    for (g, meta) in builder.metadata().row_groups().iter().enumerate() {
        let group_start = end;
        end += meta.num_rows().max(0) as u64;
        if end > first {
            if groups.is_empty() {
                start = group_start;
            }
            groups.push(g);
        }
    }
    // Then the rows before `first` inside its row group are skipped by the decoder.
    let skip = if groups.is_empty() { 0 } else { (first - start) as usize };
    let reader = builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_offset(skip)
        .with_batch_size(1024)
        .build()
        .map_err(|e| Error::parquet(path, e))?;
    // After projection, columns keep the file's order: map each request to its slot.
    let slots = order.iter().map(|i| roots.iter().position(|r| r == i).expect("projected")).collect();
    Ok(Box::new(ParquetRows { path: path.to_path_buf(), reader, columns: columns.to_vec(), slots, batch: None, at: 0, next_index: first }))
}

fn check_arrow_type(path: &Path, name: &str, dt: &DataType, kind: Kind) -> Result<()> {
    let ok = match kind {
        Kind::Text => matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        Kind::Label => dt.is_integer(),
        Kind::Messages => matches!(dt, DataType::List(_) | DataType::LargeList(_)),
        Kind::Numbers => match dt {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type().is_numeric(),
            other => other.is_numeric(),
        },
    };
    if ok { Ok(()) } else { Err(Error::data(path, format!("column `{name}` has type {dt}, expected {}", kind.describe()))) }
}

struct ParquetRows {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    columns: Vec<Column>,
    slots: Vec<usize>,
    batch: Option<RecordBatch>,
    at: usize,
    next_index: u64,
}

impl Iterator for ParquetRows {
    type Item = Result<Row>;
    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(batch) = &self.batch
                && self.at < batch.num_rows()
            {
                let i = self.at;
                self.at += 1;
                let index = self.next_index;
                self.next_index += 1;
                let mut fields = Vec::with_capacity(self.columns.len());
                for (c, &slot) in self.columns.iter().zip(&self.slots) {
                    match arrow_field(batch.column(slot), i, c.kind) {
                        Ok(f) => fields.push(f),
                        Err(m) => return Some(Err(Error::data(&self.path, format!("row {index}, column `{}`: {m}", c.name)))),
                    }
                }
                return Some(Ok(Row { index, fields }));
            }
            match self.reader.next()? {
                Ok(b) => {
                    self.batch = Some(b);
                    self.at = 0;
                }
                Err(e) => return Some(Err(Error::arrow(&self.path, e))),
            }
        }
    }
}

fn arrow_field(array: &ArrayRef, i: usize, kind: Kind) -> std::result::Result<Field, String> {
    if array.is_null(i) {
        return Ok(Field::Missing);
    }
    match kind {
        Kind::Messages => arrow_json(array.as_ref(), i).map(Field::Json),
        Kind::Text => {
            let s = match array.data_type() {
                DataType::Utf8 => array.as_string::<i32>().value(i),
                DataType::LargeUtf8 => array.as_string::<i64>().value(i),
                DataType::Utf8View => array.as_string_view().value(i),
                dt => return Err(format!("type {dt} is not a string")),
            };
            Ok(Field::Text(s.to_string()))
        }
        Kind::Label => {
            let v = arrow::compute::cast(&array.slice(i, 1), &DataType::Int64).map_err(|e| e.to_string())?;
            Ok(Field::Label(v.as_primitive::<arrow::datatypes::Int64Type>().value(0)))
        }
        Kind::Numbers => {
            let values = match array.data_type() {
                DataType::List(_) => array.as_list::<i32>().value(i),
                DataType::LargeList(_) => array.as_list::<i64>().value(i),
                DataType::FixedSizeList(_, _) => array.as_fixed_size_list().value(i),
                _ => array.slice(i, 1),
            };
            if values.null_count() > 0 {
                return Err("list holds a null value".to_string());
            }
            let f = arrow::compute::cast(&values, &DataType::Float32).map_err(|e| e.to_string())?;
            Ok(Field::Numbers(f.as_primitive::<arrow::datatypes::Float32Type>().values().to_vec()))
        }
    }
}

/// Value `i` of an Arrow array as JSON: strings, numbers, booleans, nulls, lists and
/// structs (what a conversation column holds).
fn arrow_json(array: &dyn Array, i: usize) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if array.is_null(i) {
        return Ok(J::Null);
    }
    let list = |values: ArrayRef| {
        (0..values.len()).map(|j| arrow_json(values.as_ref(), j)).collect::<std::result::Result<Vec<_>, _>>().map(J::Array)
    };
    Ok(match array.data_type() {
        DataType::Utf8 => J::String(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => J::String(array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => J::String(array.as_string_view().value(i).to_string()),
        DataType::Boolean => J::Bool(array.as_boolean().value(i)),
        DataType::Null => J::Null,
        DataType::List(_) => list(array.as_list::<i32>().value(i))?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(i))?,
        DataType::FixedSizeList(_, _) => list(array.as_fixed_size_list().value(i))?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = serde_json::Map::new();
            for (f, column) in fields.iter().zip(s.columns()) {
                map.insert(f.name().clone(), arrow_json(column.as_ref(), i)?);
            }
            J::Object(map)
        }
        dt if dt.is_integer() => {
            let v = arrow::compute::cast(&array.slice(i, 1), &DataType::Int64).map_err(|e| e.to_string())?;
            J::from(v.as_primitive::<arrow::datatypes::Int64Type>().value(0))
        }
        dt if dt.is_floating() => {
            let v = arrow::compute::cast(&array.slice(i, 1), &DataType::Float64).map_err(|e| e.to_string())?;
            serde_json::Number::from_f64(v.as_primitive::<arrow::datatypes::Float64Type>().value(0)).map(J::Number).unwrap_or(J::Null)
        }
        dt => return Err(format!("holds {dt}, which a conversation cannot hold")),
    })
}
