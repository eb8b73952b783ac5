//! User-visible text, snapshot-tested (insta): `--help` pages and the `inspect` report,
//! with temporary paths filtered. Review changes with `cargo insta review`, or rerun with
//! `INSTA_UPDATE=always` and read the diff.

use crate::common::*;

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"/tmp/distill-test-[A-Za-z0-9]+", "[TMP]");
    s.add_filter(r"distill \d+\.\d+\.\d+", "distill [VERSION]");
    s
}

#[test]
fn help_pages() {
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help_cache_teacher", vec!["cache-teacher", "--help"]),
        ("help_train_student", vec!["train-student", "--help"]),
    ] {
        let o = Distill::bare().args(args).ok();
        settings().bind(|| insta::assert_snapshot!(name, stdout(&o)));
    }
}

#[test]
fn inspect_report() {
    let t = temp();
    let out = t.path().join("cache");
    cache_digits("test.parquet", &out, &["--top-k", "5", "--temperature", "2"]);
    let o = Distill::new("inspect").arg(&out).ok();
    settings().bind(|| insta::assert_snapshot!("inspect_digits_k5_t2", stdout(&o)));
}
