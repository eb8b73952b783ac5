//! `distill init-student`: a smaller checkpoint made from a larger one of the same family by
//! copying weights (DistilBERT's initialisation): the embeddings, the chosen blocks
//! (renumbered), the final norm and the head. No model is run; tensors keep their dtype.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde_json::{Value, json};

use super::{SIDE_FILES, WEIGHTS_FILE, cfg_err, weight_files};
use crate::error::{Error, Result};
use crate::integrity::write_atomic;

/// What `init-student` wrote.
#[derive(Debug, Clone)]
pub struct InitSummary {
    pub out: PathBuf,
    pub layers_from: usize,
    pub layers: Vec<usize>,
    pub tensors: usize,
    pub bytes: u64,
}

/// The block index a tensor name belongs to (`model.layers.3.mlp...`, `bert.encoder.layer.3...`,
/// `distilbert.transformer.layer.3...`) and the name's parts before and after the index.
fn block_of(name: &str) -> Option<(&str, usize, &str)> {
    for marker in ["layers.", "layer."] {
        if let Some(at) = name.find(marker) {
            let rest = &name[at + marker.len()..];
            let digits = rest.find('.').map(|d| &rest[..d])?;
            if let Ok(i) = digits.parse() {
                return Some((&name[..at + marker.len()], i, &rest[digits.len()..]));
            }
        }
    }
    None
}

/// Copy `layers` (ascending block indices) of the checkpoint `from` into a checkpoint at
/// `out` with `layers.len()` blocks.
pub fn init_student(from: &Path, layers: &[usize], out: &Path, overwrite: bool) -> Result<InitSummary> {
    crate::untrusted::refuse_overlap(("--out", out), &[("--from", from)])?;
    let path = from.join("config.json");
    let bytes = crate::untrusted::read(&path, crate::untrusted::Cap::Settings)?;
    let mut config: Value = serde_json::from_slice(&bytes).map_err(|e| cfg_err(from, format!("not valid JSON: {e}")))?;
    super::read_arch(from)?; // a family the students implement
    let key = if config.get("n_layers").is_some() { "n_layers" } else { "num_hidden_layers" };
    let count = config.get(key).and_then(Value::as_u64).ok_or_else(|| cfg_err(from, format!("`{key}` is missing")))? as usize;
    if layers.is_empty() || layers.windows(2).any(|w| w[0] >= w[1]) || layers.iter().any(|&l| l >= count) {
        return Err(Error::Config(format!(
            "--layers {layers:?}: expected ascending block indices below the checkpoint's {count} ({})",
            path.display()
        )));
    }
    prepare_out(out, overwrite)?;
    let new_index: BTreeMap<usize, usize> = layers.iter().enumerate().map(|(new, &old)| (old, new)).collect();
    let files = weight_files(from)?;
    let buffers = files.iter().map(|f| crate::untrusted::read(f, crate::untrusted::Cap::Weights)).collect::<Result<Vec<_>>>()?;
    let tensors = kept_tensors(&files, &buffers, &new_index)?;
    let names = tensors.len();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = safetensors::tensor::serialize(tensors, Some(meta))
        .map_err(|e| Error::io(out.join(WEIGHTS_FILE), std::io::Error::other(e.to_string())))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join(WEIGHTS_FILE), &weights)?;
    config[key] = json!(layers.len());
    if let Some(types) = config.get("layer_types").and_then(Value::as_array).cloned() {
        config["layer_types"] = json!(layers.iter().filter_map(|&l| types.get(l).cloned()).collect::<Vec<_>>());
    }
    if let Some(m) = config.get("max_window_layers").and_then(Value::as_u64) {
        config["max_window_layers"] = json!(layers.iter().filter(|&&l| (l as u64) < m).count());
    }
    write_atomic(&out.join("config.json"), &serde_json::to_vec_pretty(&config).expect("serialises"))?;
    for name in SIDE_FILES.iter().chain(&["tokenizer.json"]) {
        let src = from.join(name);
        if src.is_file() {
            let b = crate::untrusted::read(&src, crate::untrusted::Cap::Tokenizer)?;
            write_atomic(&out.join(name), &b)?;
        }
    }
    Ok(InitSummary { out: out.to_path_buf(), layers_from: count, layers: layers.to_vec(), tensors: names, bytes: weights.len() as u64 })
}

/// The tensors to keep, renamed: every tensor outside the blocks, and the chosen blocks'
/// under their new indices, with their bytes and dtype as stored.
fn kept_tensors<'a>(
    files: &[PathBuf],
    buffers: &'a [Vec<u8>],
    new_index: &BTreeMap<usize, usize>,
) -> Result<Vec<(String, safetensors::tensor::TensorView<'a>)>> {
    let mut kept = Vec::new();
    for (f, bytes) in files.iter().zip(buffers) {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| Error::io(f, std::io::Error::other(format!("not a safetensors file: {e}"))))?;
        for (name, view) in st.tensors() {
            let renamed = match block_of(&name) {
                Some((head, i, tail)) => match new_index.get(&i) {
                    Some(new) => format!("{head}{new}{tail}"),
                    None => continue,
                },
                None => name.clone(),
            };
            kept.push((renamed, view));
        }
    }
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(kept)
}

/// `out` must be new or empty; with `overwrite`, the weights of a checkpoint there are
/// removed first: a sharded checkpoint's `model.safetensors.index.json` left beside the new
/// `model.safetensors` would be what every loader reads.
fn prepare_out(out: &Path, overwrite: bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(()) };
    let mut found: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    if !overwrite {
        return Err(Error::Config(format!(
            "--out {} is not empty (holds {}); pass --overwrite to replace the checkpoint there, or choose another --out",
            out.display(),
            found.join(", ")
        )));
    }
    for name in found.iter().filter(|n| n.ends_with(".safetensors") || n.as_str() == "model.safetensors.index.json") {
        let p = out.join(name);
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_indices_are_found_in_every_family_s_names() {
        assert_eq!(block_of("model.layers.12.mlp.up_proj.weight"), Some(("model.layers.", 12, ".mlp.up_proj.weight")));
        assert_eq!(block_of("bert.encoder.layer.3.output.dense.bias"), Some(("bert.encoder.layer.", 3, ".output.dense.bias")));
        assert_eq!(
            block_of("distilbert.transformer.layer.0.ffn.lin1.weight"),
            Some(("distilbert.transformer.layer.", 0, ".ffn.lin1.weight"))
        );
        assert_eq!(block_of("model.embed_tokens.weight"), None);
        assert_eq!(block_of("bert.embeddings.LayerNorm.weight"), None);
    }
}
