//! Encoder checkpoints (`bert`, `distilbert`): `BertForSequenceClassification` /
//! `DistilBertForSequenceClassification`, or a bare `BertModel` / `DistilBertModel`
//! (a fresh head, said in a note), read onto the encoder student and written back in their
//! own `model_type`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde_json::{Value, json};

use super::{HfCheckpoint, Take, cfg_err, put_layer_norm, put_linear, values};
use crate::error::Result;
use crate::student::encoder::{Encoder, EncoderConfig, EncoderFamily};

/// The encoder families read and written.
pub const MODEL_TYPES: [&str; 2] = ["bert", "distilbert"];

/// The weight names of a family: (prefix of the encoder, the names of one block's parts,
/// the pooler).
struct Names {
    embeddings: &'static str,
    layer: &'static str,
    /// q, k, v, attention output, attention norm, up, down, output norm
    block: [&'static str; 8],
    pooler: &'static str,
}

fn names(family: EncoderFamily, prefixed: bool) -> Names {
    match (family, prefixed) {
        (EncoderFamily::Bert, p) => Names {
            embeddings: if p { "bert.embeddings" } else { "embeddings" },
            layer: if p { "bert.encoder.layer" } else { "encoder.layer" },
            block: [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ],
            pooler: if p { "bert.pooler.dense" } else { "pooler.dense" },
        },
        (EncoderFamily::DistilBert, p) => Names {
            embeddings: if p { "distilbert.embeddings" } else { "embeddings" },
            layer: if p { "distilbert.transformer.layer" } else { "transformer.layer" },
            block: [
                "attention.q_lin",
                "attention.k_lin",
                "attention.v_lin",
                "attention.out_lin",
                "sa_layer_norm",
                "ffn.lin1",
                "ffn.lin2",
                "output_layer_norm",
            ],
            pooler: "pre_classifier",
        },
    }
}

/// An encoder's `config.json` as the architecture it describes.
pub(super) fn read_config(c: &Value, dir: &Path, model_type: &str) -> Result<EncoderConfig> {
    let distil = model_type == "distilbert";
    let key = |bert: &'static str, distilbert: &'static str| if distil { distilbert } else { bert };
    let int = |k: &str| -> Result<usize> {
        c.get(k).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| cfg_err(dir, format!("`{k}` is missing or not an integer")))
    };
    let str_or = |k: &str, d: &str| c.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
    let act_key = key("hidden_act", "activation");
    let act = str_or(act_key, "gelu");
    if act != "gelu" {
        return Err(cfg_err(dir, format!("{act_key} = `{act}`: the encoder student uses exact GELU (`gelu`)")));
    }
    let pos = str_or("position_embedding_type", "absolute");
    if pos != "absolute" {
        return Err(cfg_err(dir, format!("position_embedding_type = `{pos}`: only `absolute` is supported")));
    }
    if c.get("sinusoidal_pos_embds").and_then(Value::as_bool) == Some(true) {
        return Err(cfg_err(dir, "sinusoidal_pos_embds = true: only learned position embeddings are supported".into()));
    }
    let (d, heads) = (int(key("hidden_size", "dim"))?, int(key("num_attention_heads", "n_heads"))?);
    if !d.is_multiple_of(heads) {
        return Err(cfg_err(dir, format!("the model width {d} is not a multiple of the {heads} heads")));
    }
    let classes = match c.get("id2label").and_then(Value::as_object) {
        Some(m) => m.len(),
        None => c.get("num_labels").and_then(Value::as_u64).unwrap_or(2) as usize,
    };
    Ok(EncoderConfig {
        vocab_size: int("vocab_size")?,
        classes,
        max_positions: int("max_position_embeddings")?,
        d_model: d,
        layers: int(key("num_hidden_layers", "n_layers"))?,
        heads,
        d_ff: int(key("intermediate_size", "hidden_dim"))?,
        type_vocab_size: if distil { 0 } else { c.get("type_vocab_size").and_then(Value::as_u64).unwrap_or(2) as usize },
        norm_eps: if distil { 1e-12 } else { c.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12) },
        family: if distil { EncoderFamily::DistilBert } else { EncoderFamily::Bert },
    })
}

/// The checkpoint's weights into `enc`; a missing pooler or classifier stays random (noted).
pub(super) fn load(ck: &mut HfCheckpoint, enc: &mut Encoder, device: &Device, notes: &mut Vec<String>) -> Result<()> {
    let family = if enc.token_type.is_none() { EncoderFamily::DistilBert } else { EncoderFamily::Bert };
    // The *ForSequenceClassification classes prefix the encoder; a bare *Model does not.
    let prefixed = ck.tensors.keys().any(|k| k.starts_with("bert.") || k.starts_with("distilbert."));
    let n = names(family, prefixed);
    let has_classifier = ck.tensors.contains_key("classifier.weight");
    let has_pooler = ck.tensors.contains_key(&format!("{}.weight", n.pooler));
    let mut t = Take { ck, device };
    t.embedding(&mut enc.word, &format!("{}.word_embeddings.weight", n.embeddings))?;
    t.embedding(&mut enc.position, &format!("{}.position_embeddings.weight", n.embeddings))?;
    if let Some(tt) = &mut enc.token_type {
        t.embedding(tt, &format!("{}.token_type_embeddings.weight", n.embeddings))?;
    }
    t.layer_norm(&mut enc.embed_norm, &format!("{}.LayerNorm", n.embeddings))?;
    for (i, b) in enc.blocks.iter_mut().enumerate() {
        let p = |part: &str| format!("{}.{i}.{part}", n.layer);
        t.linear(&mut b.q, &p(n.block[0]))?;
        t.linear(&mut b.k, &p(n.block[1]))?;
        t.linear(&mut b.v, &p(n.block[2]))?;
        t.linear(&mut b.attn_out, &p(n.block[3]))?;
        t.layer_norm(&mut b.attn_norm, &p(n.block[4]))?;
        t.linear(&mut b.up, &p(n.block[5]))?;
        t.linear(&mut b.down, &p(n.block[6]))?;
        t.layer_norm(&mut b.mlp_norm, &p(n.block[7]))?;
    }
    if has_pooler {
        t.linear(&mut enc.pooler, n.pooler)?;
    } else {
        notes.push(format!("the checkpoint has no `{}`: it starts from random weights", n.pooler));
    }
    if has_classifier {
        t.linear(&mut enc.classifier, "classifier")?;
    } else {
        notes.push(
            "the checkpoint has no classification head (a bare encoder): the head starts from random weights, \
             untrained, so its outputs mean nothing until the student is trained"
                .into(),
        );
    }
    Ok(())
}

/// The encoder's tensors and `config.json`: the source checkpoint's with the head's labels
/// set, or a BERT config for a fresh student.
pub(super) fn write(
    enc: &Encoder,
    c: &EncoderConfig,
    t: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pad_id: Option<u32>,
    source: Option<Value>,
) -> Value {
    let n = names(c.family, true);
    t.insert(format!("{}.word_embeddings.weight", n.embeddings), values(enc.word.weight.val()));
    t.insert(format!("{}.position_embeddings.weight", n.embeddings), values(enc.position.weight.val()));
    if let Some(tt) = &enc.token_type {
        t.insert(format!("{}.token_type_embeddings.weight", n.embeddings), values(tt.weight.val()));
    }
    put_layer_norm(t, &enc.embed_norm, &format!("{}.LayerNorm", n.embeddings));
    for (i, b) in enc.blocks.iter().enumerate() {
        let p = |part: &str| format!("{}.{i}.{part}", n.layer);
        put_linear(t, &b.q, &p(n.block[0]));
        put_linear(t, &b.k, &p(n.block[1]));
        put_linear(t, &b.v, &p(n.block[2]));
        put_linear(t, &b.attn_out, &p(n.block[3]));
        put_layer_norm(t, &b.attn_norm, &p(n.block[4]));
        put_linear(t, &b.up, &p(n.block[5]));
        put_linear(t, &b.down, &p(n.block[6]));
        put_layer_norm(t, &b.mlp_norm, &p(n.block[7]));
    }
    put_linear(t, &enc.pooler, n.pooler);
    put_linear(t, &enc.classifier, "classifier");
    let id2label: serde_json::Map<String, Value> = (0..c.classes).map(|i| (i.to_string(), json!(format!("LABEL_{i}")))).collect();
    let label2id: serde_json::Map<String, Value> = (0..c.classes).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
    let mut config = source.unwrap_or_else(|| {
        json!({
            "model_type": "bert",
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "intermediate_size": c.d_ff,
            "hidden_act": "gelu",
            "max_position_embeddings": c.max_positions,
            "type_vocab_size": c.type_vocab_size,
            "layer_norm_eps": c.norm_eps,
            "position_embedding_type": "absolute",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "pad_token_id": pad_id.unwrap_or(0),
        })
    });
    // The head the run trained: its class count (a bare checkpoint's head is new).
    let head = match c.family {
        EncoderFamily::Bert => "BertForSequenceClassification",
        EncoderFamily::DistilBert => "DistilBertForSequenceClassification",
    };
    let keys = json!({
        "architectures": [head],
        "id2label": id2label,
        "label2id": label2id,
        "problem_type": "single_label_classification",
    });
    for (k, v) in keys.as_object().expect("an object") {
        config[k] = v.clone();
    }
    config
}
