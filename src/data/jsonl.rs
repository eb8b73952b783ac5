//! JSONL datasets, plain, gzip or zstd: one JSON object per non-blank line; a row can be
//! found by its byte offset in one pass ([`jsonl_row_starts`]) and read from there.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::{Column, Field, Format, Kind, Row, Rows, open, single_file};

/// The keys of the first row.
pub(super) fn column_names(path: &Path) -> Result<Vec<String>> {
    for (i, line) in jsonl_reader(path)?.lines().enumerate() {
        let line = line.map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))?;
        let line = without_bom(&line);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::data(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
        let obj = value.as_object().ok_or_else(|| Error::data(path, format!("line {}: not a JSON object", i + 1)))?;
        return Ok(obj.keys().cloned().collect());
    }
    Ok(Vec::new())
}

/// Whether the first row's value of `name` is a list.
pub(super) fn holds_lists(path: &Path, name: &str) -> Result<bool> {
    for line in jsonl_reader(path)?.lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let line = without_bom(&line);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::data(path, format!("row 0: not valid JSON: {e}")))?;
        return Ok(value.get(name).is_some_and(|v| v.is_array()));
    }
    Ok(false)
}

/// Non-blank lines.
pub(super) fn count(path: &Path) -> Result<u64> {
    let mut n = 0;
    for (i, line) in jsonl_reader(path)?.lines().enumerate() {
        if !is_blank_line(line.map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))?.as_bytes()) {
            n += 1;
        }
    }
    Ok(n)
}

/// The decompressed bytes of a JSONL file, buffered.
pub(super) fn jsonl_reader(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = open(path)?;
    Ok(match Format::of(path)? {
        Format::JsonlGz => Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file))),
        Format::JsonlZst => Box::new(std::io::BufReader::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))?)),
        _ => Box::new(std::io::BufReader::new(file)),
    })
}

/// Where a row starts in a JSONL file: its index, byte offset and the number of lines
/// before it (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowStart {
    pub row: u64,
    pub byte: u64,
    pub line: u64,
}

/// One pass over a JSONL file, parsing nothing: where each of `rows` (ascending) starts.
/// Rows past the end are left out. With these, [`read_jsonl_at`] starts reading without a
/// scan, so reading a file in shards costs one pass, not one per shard.
pub fn jsonl_row_starts(path: &Path, rows: &[u64]) -> Result<Vec<RowStart>> {
    let path = &single_file(path)?;
    let mut reader = jsonl_reader(path)?;
    let (mut out, mut want) = (Vec::with_capacity(rows.len()), rows.iter().copied().peekable());
    let (mut row, mut byte, mut line_no, mut line) = (0u64, 0u64, 0u64, Vec::new());
    while want.peek().is_some() {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| Error::io(path, e))? as u64;
        if n == 0 {
            break;
        }
        if !is_blank_line(&line) {
            while want.next_if(|&r| r == row).is_some() {
                out.push(RowStart { row, byte, line: line_no });
            }
            row += 1;
        }
        byte += n;
        line_no += 1;
    }
    Ok(out)
}

/// A line without the UTF-8 byte order mark some editors put at the start of a file.
pub(super) fn without_bom(line: &str) -> &str {
    line.strip_prefix('\u{feff}').unwrap_or(line)
}

/// A JSONL line that is not a row: empty or whitespace only (Unicode whitespace, as the
/// reader trims it). One rule for the reader and for [`jsonl_row_starts`], so a row's index
/// is the same whichever way the file is read.
pub(super) fn is_blank_line(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok_and(|l| without_bom(l).trim().is_empty())
}

pub(super) fn rows_at(path: &Path, columns: &[Column], at: RowStart) -> Result<Rows> {
    let reader: Box<dyn BufRead + Send> = if Format::of(path)? == Format::Jsonl {
        use std::io::Seek;
        let mut file = open(path)?;
        file.seek(std::io::SeekFrom::Start(at.byte)).map_err(|e| Error::io(path, e))?;
        Box::new(std::io::BufReader::new(file))
    } else {
        // A compressed stream cannot seek: decompress and drop the bytes before the row.
        let mut reader = jsonl_reader(path)?;
        let skipped =
            std::io::copy(&mut std::io::Read::take(&mut reader, at.byte), &mut std::io::sink()).map_err(|e| Error::io(path, e))?;
        if skipped != at.byte {
            return Err(Error::data(path, format!("ends at byte {skipped}, before row {} at byte {}", at.row, at.byte)));
        }
        reader
    };
    Ok(Box::new(JsonlRows {
        path: path.to_path_buf(),
        lines: reader.lines(),
        columns: columns.to_vec(),
        line_no: at.line,
        next_index: at.row,
    }))
}

struct JsonlRows {
    path: PathBuf,
    lines: std::io::Lines<Box<dyn BufRead + Send>>,
    columns: Vec<Column>,
    line_no: u64,
    next_index: u64,
}

impl Iterator for JsonlRows {
    type Item = Result<Row>;
    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(Error::data(&self.path, format!("line {}: {e}", self.line_no + 1)))),
            };
            self.line_no += 1;
            let line = without_bom(&line);
            if is_blank_line(line.as_bytes()) {
                continue;
            }
            let index = self.next_index;
            self.next_index += 1;
            let at = |m: String| Error::data(&self.path, format!("row {index} (line {}): {m}", self.line_no));
            let value: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => return Some(Err(at(format!("not valid JSON: {e}")))),
            };
            let Some(obj) = value.as_object() else {
                return Some(Err(at("not a JSON object".to_string())));
            };
            let mut fields = Vec::with_capacity(self.columns.len());
            for c in &self.columns {
                match json_field(obj.get(&c.name), c.kind) {
                    Ok(f) => fields.push(f),
                    Err(m) => return Some(Err(at(format!("column `{}`: {m}", c.name)))),
                }
            }
            return Some(Ok(Row { index, fields }));
        }
    }
}

fn json_field(v: Option<&serde_json::Value>, kind: Kind) -> std::result::Result<Field, String> {
    use serde_json::Value as J;
    let found = |v: &J| match v {
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "a list",
        J::Object(_) => "an object",
        J::Null => "null",
    };
    let Some(v) = v else { return Ok(Field::Missing) };
    match (kind, v) {
        (_, J::Null) => Ok(Field::Missing),
        (Kind::Messages, J::Array(_)) => Ok(Field::Json(v.clone())),
        (Kind::Text, J::String(s)) => Ok(Field::Text(s.clone())),
        (Kind::Label, J::Number(n)) if n.as_i64().is_some() => Ok(Field::Label(n.as_i64().unwrap_or_default())),
        (Kind::Numbers, J::Number(n)) => Ok(Field::Numbers(vec![n.as_f64().unwrap_or(f64::NAN) as f32])),
        (Kind::Numbers, J::Array(items)) => items
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| format!("list holds {}, expected numbers", found(x))))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Field::Numbers),
        (kind, other) => Err(format!("found {}, expected {}", found(other), kind.describe())),
    }
}
