//! Caches on object storage, against a real S3-compatible server: moto (from PyPI, installed
//! into .venv by .ci/setup) started on loopback by the test. No mock: distill talks S3 over
//! HTTP to it through the `object_store` crate. Where moto is missing the tests say so and
//! skip (unless `DISTILL_REQUIRE_ALL=1`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;

const SECRET: &str = "distill-secret-never-logged";
const BUCKET: &str = "distill-test";

/// A moto S3 server on 127.0.0.1, killed on drop.
struct S3 {
    child: Child,
    port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Whether moto's server can run here (checked once), or the reason printed and the test
/// skipped.
fn have_moto() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| have_python_module("moto.server"));
    have_tool(ok, "the `moto` Python package (an S3 server for the object-store tests)", "bash .ci/setup, with .venv/bin first on PATH")
}

fn start_s3() -> S3 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m moto.server (pip install -r .ci/requirements.txt)");
    let s3 = S3 { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "moto did not start on port {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = http(port, &format!("PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"), "create bucket: {r}");
    s3
}

/// Run `cmd` against the server, with credentials in the environment and its own staging
/// directory; the secret key must not be printed.
fn distill_s3(s3: &S3, staging: &Path, cmd: Distill) -> Output {
    let o = cmd
        .env("AWS_ACCESS_KEY_ID", "test-key")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", s3.port))
        .env("AWS_ALLOW_HTTP", "true")
        .env("DISTILL_STAGING", staging)
        .run();
    assert!(!stdout(&o).contains(SECRET) && !stderr(&o).contains(SECRET), "the secret key was printed");
    o
}

/// Keys of the objects under `prefix` (ListObjectsV2 over plain HTTP).
fn list(s3: &S3, prefix: &str) -> Vec<String> {
    let r = http(
        s3.port,
        &format!("GET /{BUCKET}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", s3.port),
    );
    r.split("<Key>").skip(1).filter_map(|x| x.split("</Key>").next()).map(str::to_string).collect()
}

fn losses(run: &Path) -> Vec<String> {
    let m = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    m.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().to_string()).collect()
}

/// cache-teacher writes to s3://, verify/inspect read it back, and train-student streams it
/// from the bucket (on a machine that never saw it: an empty staging directory) to exactly
/// the losses of the same training from a local copy of the cache.
#[test]
fn a_cache_in_s3_trains_the_same_student_as_a_local_one() {
    if !have_moto() {
        return;
    }
    let s3 = start_s3();
    let t = temp();
    let url = format!("s3://{BUCKET}/teams/digits");
    let train_data = data("digits/train.parquet");
    let capture = |out: &str, staging: &Path| {
        let cmd =
            Distill::digits_cache("train.parquet", Path::new(out)).args(["--top-k", "5", "--temperature", "2", "--rows-per-shard", "300"]);
        distill_s3(&s3, staging, cmd)
    };
    let o = capture(&url, &t.path().join("gpu-box"));
    ok(&o);
    assert!(stdout(&o).contains(&url), "the summary names the URL: {}", stdout(&o));
    let keys = list(&s3, "teams/digits/");
    for k in ["manifest.json", "shard-00000.parquet", "shard-00003.parquet"] {
        assert!(keys.iter().any(|x| x == &format!("teams/digits/{k}")), "{k} in the bucket: {keys:?}");
    }
    assert!(!keys.iter().any(|x| x.contains("partial")), "the partial manifest is removed at the end: {keys:?}");
    let o = distill_s3(&s3, &t.path().join("laptop"), Distill::new("verify").arg(&url));
    ok(&o);
    assert!(stdout(&o).contains("4 shards match"), "{}", stdout(&o));

    // Rerun into the bucket from another machine: the cache is found complete, nothing is computed.
    let o = capture(&url, &t.path().join("other-box"));
    ok(&o);
    assert!(stdout(&o).contains("already complete"), "{}", stdout(&o));

    let local = t.path().join("local-cache");
    ok(&capture(&local.display().to_string(), &t.path().join("unused")));
    let train = |cache: &str, out: &Path, staging: &Path| {
        let cmd =
            Distill::train(cache, &train_data, out).args(["--student", "mlp:hidden=16", "--epochs", "2", "--batch-size", "64", "--quiet"]);
        distill_s3(&s3, staging, cmd)
    };
    let from_s3 = t.path().join("run-s3");
    ok(&train(&url, &from_s3, &t.path().join("trainer")));
    let from_disk = t.path().join("run-local");
    ok(&train(&local.display().to_string(), &from_disk, &t.path().join("unused")));
    let (a, b) = (losses(&from_s3), losses(&from_disk));
    // 2 epochs of 4 shards (300, 300, 300, 297 rows), shuffled together (the default window
    // is 4 shards), in batches of 64: 2 * ceil(1197 / 64) = 2 * 19 steps.
    assert_eq!(a.len(), 38, "steps: {}", a.len());
    assert_eq!(a, b, "same cache, same seed: same losses");
}

/// A URL without a finished cache, and an unknown scheme, are refused by name.
#[test]
fn missing_remote_caches_and_unknown_schemes_are_named() {
    if !have_moto() {
        return;
    }
    let s3 = start_s3();
    let t = temp();
    let cmd =
        Distill::train(format!("s3://{BUCKET}/nothing-here"), data("digits/train.parquet"), t.path().join("r")).opt("--student", "mlp");
    let o = distill_s3(&s3, t.path(), cmd);
    fails_with(&o, &["s3://distill-test/nothing-here", "no manifest.json there"]);
    let o = distill_s3(&s3, t.path(), Distill::new("verify").arg("s3://no-such-bucket/x"));
    fails_with(&o, &["object storage s3://no-such-bucket/x"]);
}

/// Three workers (`--part I/3`, each with its own staging directory, like three pods)
/// write into one bucket prefix; `merge` in the bucket gives the cache one local run gives.
#[test]
fn sharded_capture_into_one_bucket_then_merge_equals_one_run() {
    if !have_moto() {
        return;
    }
    let s3 = start_s3();
    let t = temp();
    let url = format!("s3://{BUCKET}/sharded");
    let args = |out: &str, extra: &[&str]| {
        digits_cache_args("train.parquet", Path::new(out), &["--temperature", "3", "--rows-per-shard", "100"]).args(extra)
    };
    for i in 0..3 {
        ok(&distill_s3(&s3, &t.path().join(format!("pod-{i}")), args(&url, &["--part", &format!("{i}/3")])));
    }
    let keys = list(&s3, "sharded/");
    for i in 0..3 {
        assert!(keys.iter().any(|k| k == &format!("sharded/manifest.part-{i}-of-3.json")), "part {i} in the bucket: {keys:?}");
    }
    let o = distill_s3(&s3, &t.path().join("merger"), Distill::new("merge").opt("--out", &url).arg(&url));
    ok(&o);
    // The same cache made locally in one run.
    let one = digits_t3_one_run_cache();
    let read = |dir: &Path| -> Vec<String> {
        let m: distill::cache::Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        m.shards.iter().map(|s| format!("{} {}", s.file, s.sha256)).collect()
    };
    // Read the merged manifest back from the bucket through a fresh staging directory.
    ok(&distill_s3(&s3, &t.path().join("reader"), Distill::new("verify").arg(&url)));
    let staged: Vec<_> = std::fs::read_dir(t.path().join("reader")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(staged.len(), 1, "one staging directory per URL");
    assert_eq!(read(&staged[0]), read(one), "merged in the bucket = one run, shard by shard");
}
