//! Shard encode and decode throughput (entries/s) and size (bytes/entry) for k = 16, 64, 128
//! on synthetic soft labels shaped like an LM's (vocab 32k, Zipf-like ids, smooth log-probs),
//! `delta_u16` next to the lossless `f32` encoding.
//!
//! `cargo bench --bench cache_io`

use std::time::Instant;

use distill::cache::{CacheReader, LogprobEncoding, Manifest, ShardBuilder};
use distill::teacher::SoftLabel;

fn labels(n: usize, k: usize) -> Vec<SoftLabel> {
    let mut s = 42u64;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let mut ids: Vec<u32> = Vec::with_capacity(k);
            while ids.len() < k {
                let id = ((32768f64).powf(next()) - 1.0) as u32; // Zipf-like
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            let mut lp = -0.5 - 3.0 * next();
            let logprobs = (0..k)
                .map(|_| {
                    lp -= 0.15 * next();
                    lp as f32
                })
                .collect();
            SoftLabel { ids, logprobs, tail_logmass: -1.2, entropy: 4.0 }
        })
        .collect()
}

fn main() {
    println!("{:>4} {:>10} {:>13} {:>15} {:>15}", "k", "encoding", "bytes/entry", "encode Mentry/s", "decode Mentry/s");
    for k in [16usize, 64, 128] {
        let n = 2_000_000 / k;
        let soft = labels(n, k);
        for enc in [LogprobEncoding::DeltaU16, LogprobEncoding::F32] {
            let dir = tempfile::tempdir().unwrap();
            let step = if enc == LogprobEncoding::DeltaU16 { distill::cache::schema::DEFAULT_LOGPROB_STEP } else { 0.0 };
            let t = Instant::now();
            let mut b = ShardBuilder::new(enc, step);
            for (i, s) in soft.iter().enumerate() {
                b.push(i as u64, 0, Some((s.ids[0] as i64, s.logprobs[0])), s);
            }
            let stamp = distill::cache::manifest::ShardStamp {
                fingerprint: String::new(),
                index: 0,
                first_row: 0,
                rows: n as u64,
                top_k: k,
                vocab_size: 32768,
                temperature: 1.0,
                logprobs: enc,
                logprob_step: step,
                features: vec![],
                label_column: None,
            };
            let info = b.write(dir.path(), &stamp).unwrap();
            let enc_s = t.elapsed().as_secs_f64();
            let m = Manifest::synthetic_for_bench(k, 32768, enc, step, info.clone());
            m.write_atomic(dir.path(), "manifest.json").unwrap();
            let reader = CacheReader::open(dir.path()).unwrap();
            let t = Instant::now();
            let mut got = 0;
            for batch in reader.read_shard(&reader.manifest().shards[0], 8192).unwrap() {
                got += batch.unwrap().len();
            }
            let dec_s = t.elapsed().as_secs_f64();
            assert_eq!(got, n);
            let entries = (n * k) as f64;
            println!(
                "{:>4} {:>10} {:>13.3} {:>15.1} {:>15.1}",
                k,
                enc.name(),
                info.bytes as f64 / entries,
                entries / enc_s / 1e6,
                entries / dec_s / 1e6
            );
        }
    }
}
