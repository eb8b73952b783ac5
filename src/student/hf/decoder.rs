//! Decoder checkpoints of the Llama family (`llama`, `qwen2`, `qwen3`, `mistral`): their
//! `config.json` read as transformers reads it, their weights mapped onto the decoder
//! student, and the student written back in the checkpoint's own `model_type`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde_json::{Value, json};

use super::{HfCheckpoint, Take, cfg_err, put_linear, values};
use crate::error::Result;
use crate::student::decoder::{Decoder, DecoderConfig, RopeScaling};

/// The decoder families read and written.
pub const MODEL_TYPES: [&str; 4] = ["llama", "qwen2", "qwen3", "mistral"];

/// A decoder's `config.json` as the architecture it describes; what the student does not
/// implement is refused naming the key.
pub(super) fn read_config(c: &Value, dir: &Path, model_type: &str) -> Result<DecoderConfig> {
    let int = |k: &str| -> Result<usize> {
        c.get(k).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| cfg_err(dir, format!("`{k}` is missing or not an integer")))
    };
    let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    for k in ["num_experts", "num_local_experts", "moe_intermediate_size"] {
        if c.get(k).is_some_and(|v| !v.is_null() && v.as_u64() != Some(0)) {
            return Err(cfg_err(dir, format!("`{k}` is set: mixture-of-experts layers are not supported by the decoder student")));
        }
    }
    let act = c.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
    if act != "silu" {
        return Err(cfg_err(dir, format!("hidden_act = `{act}`: the decoder student uses SwiGLU (silu)")));
    }
    if flag("mlp_bias") {
        return Err(cfg_err(dir, "`mlp_bias` = true: the decoder student's MLP has no biases".into()));
    }
    // Llama's and Qwen3's attention_bias puts a bias on the output projection too.
    if model_type != "qwen2" && flag("attention_bias") {
        return Err(cfg_err(dir, "`attention_bias` = true: the decoder student has no bias on the output projection".into()));
    }
    if let Some(f) = c.get("partial_rotary_factor").and_then(Value::as_f64)
        && f != 1.0
    {
        return Err(cfg_err(dir, format!("partial_rotary_factor = {f}: only full rotary positions are supported")));
    }
    let (d, heads) = (int("hidden_size")?, int("num_attention_heads")?);
    if heads == 0 {
        return Err(cfg_err(dir, "num_attention_heads is 0".into()));
    }
    let kv = c.get("num_key_value_heads").and_then(Value::as_u64).map(|v| v as usize).unwrap_or(heads);
    let head_dim = c.get("head_dim").and_then(Value::as_u64).map(|v| v as usize);
    let hd = head_dim.unwrap_or(d / heads);
    if kv == 0 || !heads.is_multiple_of(kv) {
        return Err(cfg_err(dir, format!("num_attention_heads = {heads} is not a multiple of num_key_value_heads = {kv}")));
    }
    if head_dim.is_none() && !d.is_multiple_of(heads) || !hd.is_multiple_of(2) {
        return Err(cfg_err(
            dir,
            format!("the head width ({hd}: head_dim, or hidden_size {d} / num_attention_heads {heads}) must be an even integer"),
        ));
    }
    let rope = c.get("rope_parameters").or_else(|| c.get("rope_scaling")).filter(|v| !v.is_null());
    let rope_theta = rope.and_then(|r| r.get("rope_theta")).or_else(|| c.get("rope_theta")).and_then(Value::as_f64).unwrap_or(10000.0);
    let max_positions = c.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as usize;
    let (sliding_layers, sliding_window) = sliding(c, dir, model_type, int("num_hidden_layers")?)?;
    Ok(DecoderConfig {
        vocab_size: int("vocab_size")?,
        d_model: d,
        layers: int("num_hidden_layers")?,
        heads,
        d_ff: int("intermediate_size")?,
        rope_theta,
        norm_eps: c.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
        kv_heads: (kv != heads).then_some(kv),
        head_dim: head_dim.filter(|&h| h != d / heads || !d.is_multiple_of(heads)),
        qkv_bias: model_type == "qwen2",
        qk_norm: model_type == "qwen3",
        tie_embeddings: flag("tie_word_embeddings"),
        rope_scaling: rope.map(|r| rope_scaling(r, dir, max_positions, hd)).transpose()?.flatten(),
        sliding_layers,
        sliding_window,
    })
}

/// `rope_scaling` (or `rope_parameters`), its type spelled `type` or `rope_type`.
fn rope_scaling(r: &Value, dir: &Path, max_positions: usize, _hd: usize) -> Result<Option<RopeScaling>> {
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| r.get(k).and_then(Value::as_f64);
    let need = |k: &str| num(k).ok_or_else(|| cfg_err(dir, format!("rope_scaling type `{kind}` needs `{k}`")));
    let original = r.get("original_max_position_embeddings").and_then(Value::as_u64).map(|v| v as usize);
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: need("factor")? }),
        // transformers' dynamic NTK scales from max_position_embeddings.
        "dynamic" => Some(RopeScaling::Dynamic { factor: need("factor")?, max_positions }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_positions: original
                .ok_or_else(|| cfg_err(dir, "rope_scaling type `llama3` needs `original_max_position_embeddings`".into()))?,
        }),
        "yarn" => {
            let factor = need("factor")?;
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match (num("attention_factor"), num("mscale"), num("mscale_all_dim")) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_positions: original.unwrap_or(max_positions),
                beta_fast: num("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: num("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0),
                attention_factor,
                truncate: r.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            })
        }
        other => {
            return Err(cfg_err(dir, format!("rope_scaling type `{other}` is not supported (supported: linear, dynamic, llama3, yarn)")));
        }
    })
}

/// Which layers use a sliding window, and its width: `layer_types` where the config lists
/// them; else Mistral's `sliding_window` (every layer), or Qwen's `use_sliding_window` from
/// `max_window_layers` on.
fn sliding(c: &Value, dir: &Path, model_type: &str, layers: usize) -> Result<(Vec<usize>, Option<usize>)> {
    let window = c.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
    let listed: Option<Vec<usize>> = c
        .get("layer_types")
        .and_then(Value::as_array)
        .map(|types| types.iter().enumerate().filter(|(_, t)| t.as_str() == Some("sliding_attention")).map(|(i, _)| i).collect());
    let layers_sliding = match (listed, model_type) {
        (Some(l), _) => l,
        (None, "mistral") if window.is_some() => (0..layers).collect(),
        (None, "qwen2" | "qwen3") if c.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => {
            let from = c.get("max_window_layers").and_then(Value::as_u64).unwrap_or(layers as u64) as usize;
            (from..layers).collect()
        }
        _ => Vec::new(),
    };
    if !layers_sliding.is_empty() && window.is_none() {
        return Err(cfg_err(dir, "layers use sliding-window attention but `sliding_window` is not set".into()));
    }
    Ok((layers_sliding.clone(), window.filter(|_| !layers_sliding.is_empty())))
}

/// The checkpoint's weights into `dec`. A tied head (`tie_word_embeddings`, or no
/// `lm_head.weight` in the files) is the embedding itself.
pub(super) fn load(ck: &mut HfCheckpoint, dec: &mut Decoder, device: &Device, notes: &mut Vec<String>) -> Result<()> {
    let untied_head = ck.tensors.contains_key("lm_head.weight");
    let mut t = Take { ck, device };
    t.embedding(&mut dec.embed, "model.embed_tokens.weight")?;
    for (i, b) in dec.blocks.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        t.rms(&mut b.attn_norm, &format!("{p}.input_layernorm.weight"))?;
        t.linear(&mut b.q, &format!("{p}.self_attn.q_proj"))?;
        t.linear(&mut b.k, &format!("{p}.self_attn.k_proj"))?;
        t.linear(&mut b.v, &format!("{p}.self_attn.v_proj"))?;
        if let (Some(qn), Some(kn)) = (&mut b.q_norm, &mut b.k_norm) {
            t.rms(qn, &format!("{p}.self_attn.q_norm.weight"))?;
            t.rms(kn, &format!("{p}.self_attn.k_norm.weight"))?;
        }
        t.linear(&mut b.o, &format!("{p}.self_attn.o_proj"))?;
        t.rms(&mut b.mlp_norm, &format!("{p}.post_attention_layernorm.weight"))?;
        t.linear(&mut b.gate, &format!("{p}.mlp.gate_proj"))?;
        t.linear(&mut b.up, &format!("{p}.mlp.up_proj"))?;
        t.linear(&mut b.down, &format!("{p}.mlp.down_proj"))?;
    }
    t.rms(&mut dec.norm, "model.norm.weight")?;
    match &mut dec.head {
        Some(head) if untied_head => t.linear(head, "lm_head")?,
        Some(_) => unreachable!("a checkpoint without lm_head.weight is read as tied"),
        None if untied_head => {
            // Tied in the config, yet the files hold a head too (transformers saves the tied
            // copy in some versions): it must be the embedding.
            let (_, head) = t.ck.tensors.remove("lm_head.weight").expect("present");
            let embed = values(dec.embed.weight.val()).1;
            if head.iter().zip(&embed).any(|(a, b)| (a - b).abs() > 1e-6) {
                notes.push("lm_head.weight differs from embed_tokens although tie_word_embeddings is set: the embedding is used, as transformers does".into());
            }
        }
        None => notes.push("the checkpoint ties lm_head to embed_tokens: the student trains them as one".into()),
    }
    Ok(())
}

/// The decoder's tensors (PyTorch names and layout) and its `config.json`: the source
/// checkpoint's with the architecture keys set, or a Llama config for a fresh student.
pub(super) fn write(
    dec: &Decoder,
    c: &DecoderConfig,
    t: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pad_id: Option<u32>,
    source: Option<Value>,
) -> Value {
    t.insert("model.embed_tokens.weight".into(), values(dec.embed.weight.val()));
    for (i, b) in dec.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        t.insert(format!("{p}.input_layernorm.weight"), values(b.attn_norm.gamma.val()));
        put_linear(t, &b.q, &format!("{p}.self_attn.q_proj"));
        put_linear(t, &b.k, &format!("{p}.self_attn.k_proj"));
        put_linear(t, &b.v, &format!("{p}.self_attn.v_proj"));
        if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
            t.insert(format!("{p}.self_attn.q_norm.weight"), values(qn.gamma.val()));
            t.insert(format!("{p}.self_attn.k_norm.weight"), values(kn.gamma.val()));
        }
        put_linear(t, &b.o, &format!("{p}.self_attn.o_proj"));
        t.insert(format!("{p}.post_attention_layernorm.weight"), values(b.mlp_norm.gamma.val()));
        put_linear(t, &b.gate, &format!("{p}.mlp.gate_proj"));
        put_linear(t, &b.up, &format!("{p}.mlp.up_proj"));
        put_linear(t, &b.down, &format!("{p}.mlp.down_proj"));
    }
    t.insert("model.norm.weight".into(), values(dec.norm.gamma.val()));
    if let Some(head) = &dec.head {
        put_linear(t, head, "lm_head");
    }
    let mut config = source.unwrap_or_else(|| {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "max_position_embeddings": 2048,
            "rope_scaling": null,
            "attention_bias": false,
            "mlp_bias": false,
            "pad_token_id": pad_id,
        })
    });
    let keys = json!({
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_head_count(),
        "head_dim": c.head_width(),
        "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
    });
    for (k, v) in keys.as_object().expect("an object") {
        config[k] = v.clone();
    }
    if config.get("rope_parameters").is_none() {
        config["rope_theta"] = json!(c.rope_theta);
    }
    config
}
