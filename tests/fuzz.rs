//! Property-based fuzzing (proptest) of what reads untrusted caches: the manifest parser and
//! the shard reader. Inputs come from another team; whatever their bytes, reading must end in
//! `Ok` or an `Err`, never a panic or an unbounded allocation.
//!
//! Executions per run: `FUZZ_CASES` (default 1000) per property; set it higher for a longer
//! search.

use std::path::Path;
use std::sync::OnceLock;

use distill::cache::{CacheReader, Manifest};
use proptest::prelude::*;

use crate::common::*;

fn cases() -> u32 {
    // Panics that the reader catches and turns into errors stay off the test output.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(distill::cache::reader::install_panic_hook);
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// A small valid cache (k = 3 of 10 classes), made once.
fn seed_cache() -> &'static (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    static SEED: OnceLock<(tempfile::TempDir, Vec<u8>, Vec<u8>)> = OnceLock::new();
    SEED.get_or_init(|| {
        let t = temp();
        let out = t.path().join("cache");
        cache_digits("test.parquet", &out, &["--top-k", "3", "--rows-per-shard", "1000"]);
        let manifest = std::fs::read(out.join("manifest.json")).unwrap();
        let shard = std::fs::read(out.join("shard-00000.parquet")).unwrap();
        (t, manifest, shard)
    })
}

/// Read everything a cache directory offers, the way stage two does.
fn read_everything(dir: &Path) -> distill::Result<usize> {
    let reader = CacheReader::open(dir)?;
    let mut n = 0;
    for shard in &reader.manifest().shards {
        for b in reader.read_shard(shard, 97)? {
            n += b?.len();
        }
    }
    Ok(n)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes as manifest.json.
    #[test]
    fn manifest_parser_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let t = temp();
        std::fs::write(t.path().join("manifest.json"), &bytes).unwrap();
        let _ = Manifest::read(t.path());
    }

    /// A valid manifest with bytes flipped, cut or spliced.
    #[test]
    fn manifest_parser_survives_mutations(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let (_, manifest, _) = seed_cache();
        let mut m = manifest.clone();
        for (i, b) in flips {
            let at = i.index(m.len());
            m[at] = b;
        }
        m.truncate(cut.index(m.len()) + 1);
        let t = temp();
        std::fs::write(t.path().join("manifest.json"), &m).unwrap();
        let _ = Manifest::read(t.path());
    }

    /// A consistent manifest (checksums recomputed) whose numbers lie: rows, positions,
    /// k, vocabulary, sizes. Reading must refuse or succeed, never panic or over-allocate.
    #[test]
    fn reader_survives_lying_manifests(top_k in 0usize..50, vocab in 0usize..20, rows in 0u64..5000, positions in 0u64..5000, first in 0u64..10) {
        let (seed, manifest, shard) = seed_cache();
        let _ = seed;
        let mut m: Manifest = serde_json::from_slice(manifest).unwrap();
        m.top_k = top_k;
        m.vocab_size = vocab;
        m.shards[0].rows = rows;
        m.shards[0].positions = positions;
        m.shards[0].first_row = first;
        m.checksum = m.compute_checksum();
        let t = temp();
        std::fs::write(t.path().join("shard-00000.parquet"), shard).unwrap();
        std::fs::write(t.path().join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let _ = read_everything(t.path());
    }

    /// A shard with bytes flipped or cut, and a manifest updated to match it (as a careless
    /// or hostile producer would write): the Parquet decoder sees the damage.
    #[test]
    fn shard_reader_survives_damaged_shards(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in proptest::option::of(any::<prop::sample::Index>())) {
        let (_, manifest, shard) = seed_cache();
        let mut bytes = shard.clone();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()) + 1);
        }
        let mut m: Manifest = serde_json::from_slice(manifest).unwrap();
        m.shards[0].bytes = bytes.len() as u64;
        m.shards[0].sha256 = distill::cache::manifest::sha256_bytes(&bytes);
        m.checksum = m.compute_checksum();
        let t = temp();
        std::fs::write(t.path().join("shard-00000.parquet"), &bytes).unwrap();
        std::fs::write(t.path().join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let _ = read_everything(t.path());
    }
}
