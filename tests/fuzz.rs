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

/// A stamp as the seed cache's first shard carries it.
fn seed_stamp() -> distill::cache::manifest::ShardStamp {
    let (_, manifest, _) = seed_cache();
    let m: Manifest = serde_json::from_slice(manifest).unwrap();
    distill::cache::manifest::ShardStamp::of(&m, 0, m.shards[0].first_row, m.shards[0].rows)
}

/// A small Hugging Face decoder checkpoint directory: `config` and one f32 tensor of `n`
/// values (the weights a forged config is held to).
fn checkpoint_with(config: &serde_json::Value, n: usize) -> tempfile::TempDir {
    let t = temp();
    std::fs::write(t.path().join("config.json"), config.to_string()).unwrap();
    let data: Vec<u8> = vec![0u8; n * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n], &data).unwrap();
    let bytes = safetensors::tensor::serialize([("model.embed_tokens.weight", view)], None).unwrap();
    std::fs::write(t.path().join("model.safetensors"), bytes).unwrap();
    t
}

/// Pieces a chat template is made of, loops and string growth among them.
fn template_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..200_000).prop_map(|n| format!("{{% for i in range({n}) %}}")),
        Just("{% endfor %}".to_string()),
        Just("{{ i }}".to_string()),
        (0u32..2_000_000).prop_map(|n| format!("{{{{ 'ab' * {n} }}}}")),
        Just("{% for m in messages %}{{ m.content }}{% endfor %}".to_string()),
        Just("{% generation %}".to_string()),
        Just("{% endgeneration %}".to_string()),
        "[a-z <>|]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// A shard's stamp as any bytes near a real one: parsing never panics, and a stamp is
    /// taken as this shard's exactly when it equals the one the manifest implies.
    #[test]
    fn shard_stamps_are_compared_exactly(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        let expected = seed_stamp();
        let mut text = serde_json::to_vec(&expected).unwrap();
        for (i, b) in flips {
            let at = i.index(text.len());
            text[at] = b;
        }
        if let Ok(stamp) = serde_json::from_slice::<distill::cache::manifest::ShardStamp>(&text) {
            prop_assert_eq!(stamp.difference(&expected).is_none(), stamp == expected);
        }
    }

    /// A Hugging Face `config.json` with any sizes (up to 10^12), beside weights of a few
    /// values: reading and building the student ends in `Ok` or an error, never an abort
    /// on an allocation the weights cannot back.
    #[test]
    fn config_json_sizes_are_held_to_the_weights(
        model_type in prop_oneof![Just("llama"), Just("qwen2"), Just("qwen3"), Just("mistral"), Just("bert"), Just("distilbert")],
        sizes in proptest::collection::vec(prop_oneof![1u64..64, 1u64..1_000_000_000_000], 6),
    ) {
        let config = serde_json::json!({
            "model_type": model_type,
            "vocab_size": sizes[0], "hidden_size": sizes[1], "dim": sizes[1],
            "num_hidden_layers": sizes[2], "n_layers": sizes[2],
            "num_attention_heads": sizes[3], "n_heads": sizes[3], "num_key_value_heads": sizes[3],
            "intermediate_size": sizes[4], "hidden_dim": sizes[4],
            "max_position_embeddings": sizes[5],
        });
        let dir = checkpoint_with(&config, 64);
        let device = burn::tensor::Device::flex();
        let _ = distill::student::hf::read_checkpoint(dir.path()).and_then(|ck| distill::student::hf::load_student(ck, &device));
    }

}

proptest! {
    // A runaway template spends its whole budget (~0.2 s) before it is refused: a tenth of
    // the cases of the other properties.
    #![proptest_config(ProptestConfig { cases: (cases() / 10).max(10), failure_persistence: None, ..ProptestConfig::default() })]

    /// Any template made of loops, repetitions and text renders or is refused; what it
    /// renders stays within the output limit.
    #[test]
    fn chat_templates_stay_within_their_limits(pieces in proptest::collection::vec(template_piece(), 0..8)) {
        let saved = distill::chat::SavedTemplate { template: pieces.concat(), tokens: Default::default() };
        if let Ok(t) = distill::chat::ChatTemplate::new(saved, "fuzz.jinja".into()) {
            let msgs = serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]);
            if let Ok(r) = t.render(&msgs, false) {
                prop_assert!(r.text.len() <= distill::chat::TEMPLATE_OUTPUT_BYTES);
            }
        }
    }
}
