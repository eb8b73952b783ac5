//! How train-student reads a shard's dataset rows: `read_rows_from(first)` (row groups
//! skipped by metadata, JSONL lines skipped unparsed) next to the straightforward
//! `read_rows().skip(first)` (every earlier row decoded), and for JSONL the path
//! train-student takes: one pass finding each shard's first row (`jsonl_row_starts`, timed
//! in), then a seek per shard (`read_jsonl_at`); over the LM training text repeated
//! 10x (14 220 rows) cut into 64-row shards, as Parquet (1024-row row groups) and JSONL.
//! Prints rows/s for one epoch's worth of shard reads and the ratio.
//!
//! `cargo bench --bench data_seek`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use distill::data::{Column, Kind, jsonl_row_starts, read_jsonl_at, read_rows, read_rows_from};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("data/lm/train.jsonl")).expect("data/lm/train.jsonl");
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = dir.path().join("train10.jsonl");
    std::fs::write(&jsonl, text.repeat(10)).expect("write");
    let prompts: Vec<String> = text
        .repeat(10)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["prompt"].as_str().expect("prompt").to_string())
        .collect();
    let parquet = dir.path().join("train10.parquet");
    let array: ArrayRef = Arc::new(StringArray::from(prompts.clone()));
    let batch = RecordBatch::try_from_iter([("prompt", array)]).expect("batch");
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(1024)).build();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet).expect("create"), batch.schema(), Some(props))
        .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");

    let rows = prompts.len() as u64;
    let shard = 64u64;
    let cols = [Column::new("prompt", Kind::Text)];
    println!("{:>8} {:>7} {:>7} {:>16} {:>16} {:>7}", "format", "rows", "shards", "from rows/s", "skip rows/s", "ratio");
    for path in [&parquet, &jsonl] {
        let time = |seek: bool| {
            let t = Instant::now();
            let mut n = 0u64;
            for first in (0..rows).step_by(shard as usize) {
                let it = if seek {
                    read_rows_from(path, &cols, first).expect("read")
                } else {
                    Box::new(read_rows(path, &cols).expect("read").skip(first as usize))
                };
                for r in it.take(shard as usize) {
                    r.expect("row");
                    n += 1;
                }
            }
            assert_eq!(n, rows);
            n as f64 / t.elapsed().as_secs_f64()
        };
        let (from, skip) = (time(true), time(false));
        let name = path.extension().and_then(|e| e.to_str()).unwrap_or("?");
        println!("{name:>8} {rows:>7} {:>7} {from:>16.0} {skip:>16.0} {:>6.1}x", rows.div_ceil(shard), from / skip);
        if path == &jsonl {
            let t = Instant::now();
            let firsts: Vec<u64> = (0..rows).step_by(shard as usize).collect();
            let mut n = 0u64;
            for at in jsonl_row_starts(path, &firsts).expect("starts") {
                for r in read_jsonl_at(path, &cols, at).expect("read").take(shard as usize) {
                    r.expect("row");
                    n += 1;
                }
            }
            assert_eq!(n, rows);
            let seek = n as f64 / t.elapsed().as_secs_f64();
            println!(
                "{:>8} {rows:>7} {:>7} {seek:>16.0} {skip:>16.0} {:>6.1}x   (row starts + seek)",
                "jsonl",
                rows.div_ceil(shard),
                seek / skip
            );
        }
    }
}
