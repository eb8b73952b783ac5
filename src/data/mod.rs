//! Training data for both stages: Parquet or JSONL files, streamed row by row.
//!
//! A dataset is one file, a directory of files or a glob (`data/train-*.parquet`, the
//! Hugging Face layout); its files, sorted by name, are read as one sequence of rows
//! numbered across them ([`resolve`]). Parquet in any codec its writers use (Snappy, gzip,
//! LZ4, Brotli, zstd, none); JSONL plain, gzip (`.jsonl.gz`) or zstd (`.jsonl.zst`).
//!
//! Callers ask for columns by name and kind; every row comes back as one [`Field`] per
//! requested column. Errors name the file, the column, the (0-based) row in that file and
//! what type was found versus expected. Memory is bounded by one Parquet record batch.

mod jsonl;
mod parquet;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use jsonl::{RowStart, jsonl_row_starts};

/// File format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    /// Plain JSONL: the only format whose rows can be found by seeking to a byte offset.
    Jsonl,
    /// gzip-compressed JSONL (`.jsonl.gz`).
    JsonlGz,
    /// zstd-compressed JSONL (`.jsonl.zst`).
    JsonlZst,
}

/// The file name endings of data files, longest first, and their formats.
const ENDINGS: [(&str, Format); 8] = [
    (".jsonl.gz", Format::JsonlGz),
    (".ndjson.gz", Format::JsonlGz),
    (".jsonl.zst", Format::JsonlZst),
    (".ndjson.zst", Format::JsonlZst),
    (".parquet", Format::Parquet),
    (".pq", Format::Parquet),
    (".jsonl", Format::Jsonl),
    (".ndjson", Format::Jsonl),
];

impl Format {
    /// The format a file name says, if it is a data file's name.
    pub fn of_name(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        ENDINGS.iter().find(|(end, _)| lower.ends_with(end)).map(|&(_, f)| f)
    }
    pub fn of(path: &Path) -> Result<Format> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Format::of_name(&name).ok_or_else(|| {
            Error::data(
                path,
                "unknown data format: expected a .parquet, .jsonl, .jsonl.gz or .jsonl.zst file, a directory of them, or a glob",
            )
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
            Format::JsonlGz => "jsonl.gz",
            Format::JsonlZst => "jsonl.zst",
        }
    }
    fn is_jsonl(self) -> bool {
        self != Format::Parquet
    }
}

/// `spec` names a glob rather than a path (it holds `*`, `?` or `[`).
fn is_glob(spec: &Path) -> bool {
    spec.to_string_lossy().contains(['*', '?', '['])
}

/// The files of a dataset, sorted by name: the file itself, the data files of a directory
/// (not its subdirectories; other files such as a dataset card are left out) or a glob's
/// matches. A directory holding several splits (`train-*` and `test-*` files, as a Hugging
/// Face dataset's `data/` does) is refused: which one to use is the user's choice.
pub fn resolve(spec: &Path) -> Result<Vec<PathBuf>> {
    // A path that exists is a path, even with glob characters in its name.
    let mut files: Vec<PathBuf> = if spec.is_file() {
        return Format::of(spec).map(|_| vec![spec.to_path_buf()]);
    } else if is_glob(spec) && !spec.exists() {
        let pattern = spec.to_string_lossy();
        let matches = glob::glob(&pattern).map_err(|e| Error::data(spec, format!("not a valid glob: {e}")))?;
        let mut files = Vec::new();
        for m in matches {
            let p = m.map_err(|e| Error::data(spec, format!("glob: {e}")))?;
            if p.is_file() {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(Error::io(spec, std::io::Error::new(std::io::ErrorKind::NotFound, "the glob matches no file")));
        }
        files
    } else if spec.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(spec).map_err(|e| Error::io(spec, e))? {
            let p = entry.map_err(|e| Error::io(spec, e))?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if p.is_file() && !name.starts_with('.') && Format::of_name(&name).is_some() {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(Error::data(spec, "the directory holds no .parquet, .jsonl, .jsonl.gz or .jsonl.zst file"));
        }
        files
    } else {
        return Err(Error::io(spec, std::io::Error::new(std::io::ErrorKind::NotFound, "data file not found")));
    };
    files.sort();
    for f in &files {
        Format::of(f)?;
    }
    let mut splits = split_names(&files);
    if splits.len() > 1 {
        // Suggest the training split where there is one.
        if let Some(i) = splits.iter().position(|s| s == "train") {
            splits.swap(0, i);
        }
        let dir = if is_glob(spec) { crate::integrity::parent_dir(spec) } else { spec };
        return Err(Error::data(
            spec,
            format!(
                "holds files of {} splits ({}); pass one split as a glob, e.g. --data '{}'",
                splits.len(),
                splits.join(", "),
                dir.join(format!("{}-*", splits[0])).display()
            ),
        ));
    }
    Ok(files)
}

/// The split names of Hugging Face shard files (`train` of `train-00000-of-00004.parquet`),
/// in order of first appearance; files not named that way name no split.
fn split_names(files: &[PathBuf]) -> Vec<String> {
    let mut splits: Vec<String> = Vec::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.split('.').next().unwrap_or("");
        // <split>-<NNNNN>-of-<NNNNN>
        let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
        let numbered = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if parts.len() == 4 && numbered(parts[0]) && parts[1] == "of" && numbered(parts[2]) && !splits.iter().any(|s| s == parts[3]) {
            splits.push(parts[3].to_string());
        }
    }
    splits
}

/// The one file of a dataset that is a single file (a glob may match exactly one).
pub fn single_file(spec: &Path) -> Result<PathBuf> {
    let mut files = resolve(spec)?;
    match files.len() {
        1 => Ok(files.remove(0)),
        n => Err(Error::data(spec, format!("is a dataset of {n} files where one file was expected"))),
    }
}

/// A dataset's files with the number of rows of each, in order.
fn files_with_rows(spec: &Path) -> Result<Vec<(PathBuf, u64)>> {
    resolve(spec)?.into_iter().map(|f| file_rows(&f).map(|n| (f, n))).collect()
}

/// Rows of one data file (not a directory or glob), remembered for the process while its size and modification time
/// stay the same (stage two seeks to every shard's first row; a JSONL file is counted once).
pub fn file_rows(path: &Path) -> Result<u64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static COUNTS: Mutex<Option<HashMap<Key, u64>>> = Mutex::new(None);
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(&n) = COUNTS.lock().expect("row counts").get_or_insert_with(HashMap::new).get(&key) {
        return Ok(n);
    }
    let n = count_file_rows(path)?;
    COUNTS.lock().expect("row counts").get_or_insert_with(HashMap::new).insert(key, n);
    Ok(n)
}

/// The common format of a dataset's files; several formats in one dataset are refused.
pub fn dataset_format(spec: &Path) -> Result<Format> {
    let files = resolve(spec)?;
    let first = Format::of(&files[0])?;
    for f in &files[1..] {
        let other = Format::of(f)?;
        if other.is_jsonl() != first.is_jsonl() {
            return Err(Error::data(
                spec,
                format!("mixes {} and {} files; a dataset's files must share one format", first.name(), other.name()),
            ));
        }
    }
    Ok(first)
}

/// What a requested column must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A UTF-8 string.
    Text,
    /// A number or a list of numbers (features fed to the teacher or student).
    Numbers,
    /// An integer class label.
    Label,
    /// A conversation: a list of `{role, content}` turns (JSON list, or Parquet
    /// list<struct>), handed on as JSON.
    Messages,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Numbers => "a number or a list of numbers",
            Kind::Label => "an integer",
            Kind::Messages => "a list of {role, content} turns",
        }
    }
}

/// A column a caller wants.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

impl Column {
    pub fn new(name: impl Into<String>, kind: Kind) -> Column {
        Column { name: name.into(), kind }
    }
}

/// One value of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Numbers(Vec<f32>),
    Label(i64),
    /// A conversation as JSON (a list of turns).
    Json(serde_json::Value),
    /// Null in Parquet, `null` or absent in JSONL.
    Missing,
}

/// One row: its 0-based index in the dataset (across its files) and one field per
/// requested column.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub index: u64,
    pub fields: Vec<Field>,
}

/// A stream of rows.
pub type Rows = Box<dyn Iterator<Item = Result<Row>> + Send>;

/// Column names present in a dataset (its first file: every file is checked against the
/// requested columns when it is read).
pub fn column_names(spec: &Path) -> Result<Vec<String>> {
    file_column_names(&resolve(spec)?[0])
}

fn file_column_names(path: &Path) -> Result<Vec<String>> {
    match Format::of(path)? {
        Format::Parquet => parquet::column_names(path),
        _ => jsonl::column_names(path),
    }
}

/// Whether column `name` holds lists (a conversation per row, TRL's conversational
/// prompt/completion) rather than scalars: the Parquet type, or the first JSONL row's value.
pub fn column_holds_lists(spec: &Path, name: &str) -> Result<bool> {
    let path = &resolve(spec)?[0];
    match Format::of(path)? {
        Format::Parquet => parquet::holds_lists(path, name),
        _ => jsonl::holds_lists(path, name),
    }
}

/// Number of rows of a dataset (Parquet: from the footers; JSONL: non-blank lines).
pub fn count_rows(spec: &Path) -> Result<u64> {
    Ok(files_with_rows(spec)?.iter().map(|(_, n)| n).sum())
}

fn count_file_rows(path: &Path) -> Result<u64> {
    match Format::of(path)? {
        Format::Parquet => parquet::count(path),
        _ => jsonl::count(path),
    }
}

fn open(path: &Path) -> Result<std::fs::File> {
    Ok(crate::untrusted::open(path, crate::untrusted::Cap::Weights)?.0)
}

/// Stream the rows of a dataset (a file, a directory or a glob; see [`resolve`]), one
/// [`Field`] per column of `columns`; rows are numbered across its files.
///
/// A requested column that a file does not have is an error naming the file's columns.
pub fn read_rows(spec: &Path, columns: &[Column]) -> Result<Rows> {
    read_rows_from(spec, columns, 0)
}

/// As [`read_rows_from`] for a JSONL file, starting at a [`RowStart`] from
/// [`jsonl_row_starts`] (a seek, no scan).
pub fn read_jsonl_at(path: &Path, columns: &[Column], at: RowStart) -> Result<Rows> {
    let path = &single_file(path)?;
    check_columns(path, columns)?;
    jsonl::rows_at(path, columns, at)
}

fn check_columns(path: &Path, columns: &[Column]) -> Result<()> {
    let names = file_column_names(path)?;
    if names.is_empty() && !columns.is_empty() {
        return Err(Error::data(path, format!("has no columns (an empty file); expected column `{}`", columns[0].name)));
    }
    for c in columns {
        if !names.contains(&c.name) {
            return Err(Error::data(path, format!("column `{}` not found; the file has columns: {}", c.name, names.join(", "))));
        }
    }
    Ok(())
}

/// As [`read_rows`], starting at row `first` (rows keep their index in the dataset)
/// without decoding the rows before it: files before the one holding `first` are not
/// opened; Parquet skips whole row groups by their metadata and the rest of the rows inside
/// the first one; JSONL skips lines without parsing them (a compressed file is decompressed
/// up to them). A single plain JSONL file is read by seeking instead ([`jsonl_row_starts`]);
/// in a compressed or multi-file JSONL dataset each shard's read scans its file from the
/// start (stage two keeps the prepared rows that fit in `--prepared-rows-mb` between epochs,
/// so for those the scan is paid once).
pub fn read_rows_from(spec: &Path, columns: &[Column], first: u64) -> Result<Rows> {
    let files = resolve(spec)?;
    if let [file] = files.as_slice() {
        return read_file_rows_from(file, columns, first);
    }
    // Several files: start in the file holding row `first` (earlier files are not opened).
    let mut start = 0u64;
    let mut rest = Vec::new();
    for (file, rows) in files_with_rows(spec)? {
        // Files without rows have nothing to read (and an empty JSONL file names no columns).
        if rows > 0 && (start + rows > first || !rest.is_empty()) {
            rest.push((file, start));
        }
        start += rows;
    }
    // Every file has the columns, checked before the first row (not when file 7 is reached).
    for (file, _) in &rest {
        check_columns(file, columns)?;
    }
    Ok(Box::new(FilesRows { files: rest.into_iter(), first, columns: columns.to_vec(), current: None }))
}

/// The rows of several files in order, renumbered across them.
struct FilesRows {
    /// (file, index of its first row in the dataset), from the file holding `first` on.
    files: std::vec::IntoIter<(PathBuf, u64)>,
    first: u64,
    columns: Vec<Column>,
    current: Option<(u64, Rows)>,
}

impl Iterator for FilesRows {
    type Item = Result<Row>;
    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some((base, rows)) = &mut self.current {
                match rows.next() {
                    Some(Ok(mut row)) => {
                        row.index += *base;
                        return Some(Ok(row));
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.current = None,
                }
            }
            let (file, base) = self.files.next()?;
            match read_file_rows_from(&file, &self.columns, self.first.saturating_sub(base)) {
                Ok(rows) => self.current = Some((base, rows)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// [`read_rows_from`] for one file; rows keep their index in the file.
fn read_file_rows_from(path: &Path, columns: &[Column], first: u64) -> Result<Rows> {
    check_columns(path, columns)?;
    match Format::of(path)? {
        Format::Parquet => parquet::rows_from(path, columns, first),
        _ => match jsonl_row_starts(path, &[first])?.first() {
            Some(&at) => jsonl::rows_at(path, columns, at),
            None => Ok(Box::new(std::iter::empty())), // `first` is past the last row
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, RecordBatch};
    use std::sync::Arc;

    fn texts(it: Rows) -> Vec<(u64, String)> {
        it.map(|r| {
            let r = r.unwrap();
            match &r.fields[0] {
                Field::Text(s) => (r.index, s.clone()),
                other => panic!("{other:?}"),
            }
        })
        .collect()
    }

    /// Three files of 4, 0 and 3 rows (one in a directory whose name holds glob characters):
    /// read from every start, across and at the boundaries, rows are numbered across files
    /// and equal a full read skipped to the start; the directory itself is a path, not a glob.
    #[test]
    fn rows_are_numbered_across_files_from_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("set[1]");
        std::fs::create_dir(&data).unwrap();
        let lines = |range: std::ops::Range<usize>| range.map(|i| format!("{{\"text\": \"r{i}\"}}\n")).collect::<String>();
        std::fs::write(data.join("a.jsonl"), lines(0..4)).unwrap();
        std::fs::write(data.join("b.jsonl"), "\n").unwrap();
        std::fs::write(data.join("c.jsonl"), lines(4..7)).unwrap();
        let cols = [Column::new("text", Kind::Text)];
        let all = texts(read_rows(&data, &cols).unwrap());
        assert_eq!(all, (0..7).map(|i| (i as u64, format!("r{i}"))).collect::<Vec<_>>());
        assert_eq!(count_rows(&data).unwrap(), 7);
        for first in 0..=8u64 {
            let want: Vec<_> = all.iter().skip(first as usize).cloned().collect();
            assert_eq!(texts(read_rows_from(&data, &cols, first).unwrap()), want, "from row {first}");
        }
        let glob = data.join("*.jsonl");
        assert!(resolve(&glob).is_err(), "the glob's directory name holds `[1]`, a character class");
        assert_eq!(resolve(&data.join("c.jsonl")).unwrap(), vec![data.join("c.jsonl")], "an existing file is a path");
    }

    /// Starting at row `first` gives exactly the rows (and indices) that skipping `first`
    /// rows of a full read gives, at every start: in a Parquet file of 4-row row groups
    /// (inside a group, at a group boundary, past the end) and in a JSONL file with blank
    /// lines, whitespace-only ones included (which are not rows).
    #[test]
    fn reading_from_a_row_matches_skipping_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<String> = (0..11).map(|i| format!("row {i}")).collect();
        let pq = dir.path().join("d.parquet");
        let array: ArrayRef = Arc::new(arrow::array::StringArray::from(values.clone()));
        let batch = RecordBatch::try_from_iter([("text", array)]).unwrap();
        let props = ::parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(4)).build();
        let mut w = ::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        let meta = w.close().unwrap();
        assert_eq!(meta.num_row_groups(), 3, "the test needs several row groups");
        let jsonl = dir.path().join("d.jsonl");
        // Blank lines: empty, and (before row 4) one of a no-break space alone, which the
        // reader's trim treats as blank.
        let lines: String = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{}{}{}\n",
                    if i % 3 == 0 { "\n" } else { "" },
                    if i == 4 { "\u{a0}\n" } else { "" },
                    serde_json::json!({"text": v})
                )
            })
            .collect();
        std::fs::write(&jsonl, lines).unwrap();
        let cols = [Column::new("text", Kind::Text)];
        for path in [&pq, &jsonl] {
            let all = texts(read_rows(path, &cols).unwrap());
            assert_eq!(all.len(), 11);
            for first in 0..=12u64 {
                let want: Vec<_> = all.iter().skip(first as usize).cloned().collect();
                assert_eq!(texts(read_rows_from(path, &cols, first).unwrap()), want, "{} from row {first}", path.display());
            }
        }
        // JSONL by seek: the same rows from every start found in one pass.
        let all = texts(read_rows(&jsonl, &cols).unwrap());
        let starts = jsonl_row_starts(&jsonl, &(0..=12).collect::<Vec<_>>()).unwrap();
        assert_eq!(starts.iter().map(|s| s.row).collect::<Vec<_>>(), (0..11).collect::<Vec<_>>(), "rows past the end are left out");
        for at in starts {
            let want: Vec<_> = all.iter().skip(at.row as usize).cloned().collect();
            assert_eq!(texts(read_jsonl_at(&jsonl, &cols, at).unwrap()), want, "from {at:?}");
        }
    }
}
