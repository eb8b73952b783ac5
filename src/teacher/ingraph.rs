//! The soft labels computed inside ONNX Runtime (`cache-teacher --topk-in onnxruntime`):
//! nodes appended to the teacher's graph in memory (the user's file is untouched) compute,
//! from the logits, `LogSoftmax(logits / T)`, its `TopK(k)` among the selectable ids, the
//! tail's log-mass (the probabilities outside the top-k summed, not `1 - top mass`), the
//! entropy, and the log-prob of each position's hard label (fed as an input), so only
//! `[positions, k]` values leave the session: on a GPU, not the `[batch, seq, vocab]`
//! logits.
//!
//! The nodes are added by protobuf's merge rule: a message field that occurs twice is
//! merged, its repeated fields concatenated, so the serialized `ModelProto { graph: {nodes,
//! initializers, inputs, outputs} }` appended to the model's bytes extends its graph.

use std::path::Path;

use ort::value::TensorElementType;

use crate::error::{Error, Result};

use super::inputs::{Feed, InputPlan};
use super::session::{TeacherDevice, session_builder};

/// Names of the inputs and outputs the appended nodes add.
pub const LABELS_INPUT: &str = "distill_hard_labels";
pub const TOP_LOGPROBS: &str = "distill_top_logprobs";
pub const TOP_IDS: &str = "distill_top_ids";
pub const TAIL_LOGMASS: &str = "distill_tail_logmass";
pub const ENTROPY: &str = "distill_entropy";
pub const LABEL_LOGPROB: &str = "distill_label_logprob";

/// The oldest default-domain opset the nodes are written for (ReduceSum, Unsqueeze and
/// Squeeze take their axes as inputs from 13 on).
pub const MIN_OPSET: i64 = 13;

/// What the appended nodes compute.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftLabelNodes {
    /// The logits output they read.
    pub logits: String,
    /// ONNX element type of the logits (1 float, 10 float16, 16 bfloat16).
    pub logits_type: i32,
    /// Rank of the logits: 2 (`[batch, classes]`) or 3 (`[batch, seq, vocab]`).
    pub rank: usize,
    pub vocab: usize,
    /// Ids the top-k may name (`< vocab` for padded vocabularies).
    pub selectable: usize,
    pub k: usize,
    pub temperature: f32,
}

const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// The default-domain opset of a serialized model (`ModelProto.opset_import`, field 8).
pub fn default_opset(model: &[u8]) -> Option<i64> {
    let mut opset = None;
    for (number, value) in fields(model)? {
        if let (8, Field::Bytes(entry)) = (number, value) {
            let (mut domain, mut version) = (String::new(), None);
            for (n, v) in fields(entry)? {
                match (n, v) {
                    (1, Field::Bytes(d)) => domain = String::from_utf8_lossy(d).into_owned(),
                    (2, Field::Varint(v)) => version = Some(v as i64),
                    _ => {}
                }
            }
            if domain.is_empty() || domain == "ai.onnx" {
                opset = version;
            }
        }
    }
    opset
}

/// `model` with the nodes appended: its bytes, then a `ModelProto` holding only the graph
/// additions.
///
/// # Shapes
/// - input `distill_hard_labels`: int64 `[batch]` or `[batch, seq]` (0 where there is none)
/// - outputs: `distill_top_logprobs` f32 and `distill_top_ids` int64 `[.., k]`;
///   `distill_tail_logmass`, `distill_entropy`, `distill_label_logprob` f32 `[..]`
///   (`..` = `[batch]` or `[batch, seq]`)
pub fn append(model: &[u8], n: &SoftLabelNodes) -> Vec<u8> {
    let mut g = Graph::default();
    g.scalar_f32("distill_t", n.temperature);
    g.ints("distill_k", &[n.k as i64]);
    g.ints("distill_axes", &[-1]);
    g.ints("distill_zero", &[0]);
    g.ints("distill_selectable", &[n.selectable as i64]);
    let logits = if n.logits_type == FLOAT {
        n.logits.clone()
    } else {
        g.node("Cast", &[&n.logits], &["distill_logits_f32"], &[("to", Attr::Int(FLOAT as i64))]);
        "distill_logits_f32".into()
    };
    g.node("Div", &[&logits, "distill_t"], &["distill_scaled"], &[]);
    g.node("LogSoftmax", &["distill_scaled"], &["distill_lsm"], &[("axis", Attr::Int(-1))]);
    let candidates = if n.selectable < n.vocab {
        g.node("Slice", &["distill_lsm", "distill_zero", "distill_selectable", "distill_axes"], &["distill_lsm_sel"], &[]);
        "distill_lsm_sel"
    } else {
        "distill_lsm"
    };
    g.node(
        "TopK",
        &[candidates, "distill_k"],
        &[TOP_LOGPROBS, TOP_IDS],
        &[("axis", Attr::Int(-1)), ("largest", Attr::Int(1)), ("sorted", Attr::Int(1))],
    );
    // The tail: every probability with the top-k set to zero, summed.
    g.node("Exp", &["distill_lsm"], &["distill_p"], &[]);
    g.node("Shape", &[TOP_IDS], &["distill_top_shape"], &[]);
    g.node("ConstantOfShape", &["distill_top_shape"], &["distill_top_zeros"], &[]);
    g.node("ScatterElements", &["distill_p", TOP_IDS, "distill_top_zeros"], &["distill_rest"], &[("axis", Attr::Int(-1))]);
    g.node("ReduceSum", &["distill_rest", "distill_axes"], &["distill_rest_mass"], &[("keepdims", Attr::Int(0))]);
    g.node("Log", &["distill_rest_mass"], &[TAIL_LOGMASS], &[]);
    // Entropy: -sum p log p.
    g.node("Mul", &["distill_p", "distill_lsm"], &["distill_plogp"], &[]);
    g.node("ReduceSum", &["distill_plogp", "distill_axes"], &["distill_neg_entropy"], &[("keepdims", Attr::Int(0))]);
    g.node("Neg", &["distill_neg_entropy"], &[ENTROPY], &[]);
    // The hard label's log-prob.
    g.node("Unsqueeze", &[LABELS_INPUT, "distill_axes"], &["distill_labels_1"], &[]);
    g.node("GatherElements", &["distill_lsm", "distill_labels_1"], &["distill_label_lp_1"], &[("axis", Attr::Int(-1))]);
    g.node("Squeeze", &["distill_label_lp_1", "distill_axes"], &[LABEL_LOGPROB], &[]);

    let lead = n.rank - 1;
    g.value_info(11, LABELS_INPUT, INT64, lead);
    g.value_info(12, TOP_LOGPROBS, FLOAT, n.rank);
    g.value_info(12, TOP_IDS, INT64, n.rank);
    for name in [TAIL_LOGMASS, ENTROPY, LABEL_LOGPROB] {
        g.value_info(12, name, FLOAT, lead);
    }
    let mut out = model.to_vec();
    out.extend(message(7, &g.bytes));
    out
}

/// A protobuf field read from a message: a varint or a length-delimited value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// The fields of one message, or `None` if it is not well-formed.
fn fields(mut b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = read_varint(&mut b)?;
        let field = match tag & 7 {
            0 => Field::Varint(read_varint(&mut b)?),
            1 => {
                b = b.get(8..)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(read_varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                Field::Bytes(v)
            }
            5 => {
                b = b.get(4..)?;
                Field::Other
            }
            _ => return None,
        };
        out.push((tag >> 3, field));
    }
    Some(out)
}

fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Field `number` holding `payload` (length-delimited).
fn message(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    varint(number << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn string(number: u64, s: &str) -> Vec<u8> {
    message(number, s.as_bytes())
}

fn int_field(number: u64, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(number << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

enum Attr {
    Int(i64),
}

/// The additions to a `GraphProto`: nodes (1), initializers (5), inputs (11), outputs (12).
#[derive(Default)]
struct Graph {
    bytes: Vec<u8>,
}

impl Graph {
    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        let mut n = Vec::new();
        for i in inputs {
            n.extend(string(1, i));
        }
        for o in outputs {
            n.extend(string(2, o));
        }
        n.extend(string(3, &format!("distill_{}_{}", op.to_lowercase(), outputs[0])));
        n.extend(string(4, op));
        for (name, Attr::Int(v)) in attrs {
            // AttributeProto: name (1), i (3), type (20) = INT (2).
            let a = [string(1, name), int_field(3, *v), int_field(20, 2)].concat();
            n.extend(message(5, &a));
        }
        self.bytes.extend(message(1, &n));
    }

    /// An initializer (`TensorProto`: dims 1, data_type 2, name 8, raw_data 9).
    fn tensor(&mut self, name: &str, dims: &[i64], data_type: i32, raw: &[u8]) {
        let mut t = Vec::new();
        for &d in dims {
            t.extend(int_field(1, d));
        }
        t.extend(int_field(2, data_type as i64));
        t.extend(string(8, name));
        t.extend(message(9, raw));
        self.bytes.extend(message(5, &t));
    }

    fn scalar_f32(&mut self, name: &str, v: f32) {
        self.tensor(name, &[], FLOAT, &v.to_le_bytes());
    }

    fn ints(&mut self, name: &str, v: &[i64]) {
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, &[v.len() as i64], INT64, &raw);
    }

    /// A graph input (11) or output (12): `ValueInfoProto { name, type: { tensor_type: {
    /// elem_type, shape of `rank` unnamed dimensions } } }`.
    fn value_info(&mut self, field: u64, name: &str, elem_type: i32, rank: usize) {
        let dims: Vec<u8> = (0..rank).flat_map(|_| message(1, &[])).collect();
        let tensor = [int_field(1, elem_type as i64), message(2, &dims)].concat();
        let info = [string(1, name), message(2, &message(1, &tensor))].concat();
        self.bytes.extend(message(field, &info));
    }
}

impl super::Teacher {
    /// Rebuild the session with nodes that compute the soft labels (top `k` of
    /// `LogSoftmax(logits / temperature)` among ids `0..selectable`, tail, entropy, the hard
    /// label's log-prob) inside ONNX Runtime: see [`super::ingraph`]. Then use
    /// [`Teacher::run_soft_labels`]. The model needs opset >= 13.
    pub fn compute_soft_labels_in_graph(&mut self, k: usize, temperature: f32, selectable: usize) -> Result<()> {
        use super::ingraph;
        let path = self.path.clone();
        let bytes = crate::untrusted::read(&path, crate::untrusted::Cap::Weights)?;
        match ingraph::default_opset(&bytes) {
            Some(v) if v >= ingraph::MIN_OPSET => {}
            found => {
                return Err(Error::teacher(
                    &path,
                    format!(
                        "--topk-in onnxruntime needs opset >= {} (the model's default-domain opset is {}); use --topk-in rust",
                        ingraph::MIN_OPSET,
                        found.map_or("not found".into(), |v| v.to_string())
                    ),
                ));
            }
        }
        let out = self.io_outputs.iter().find(|o| o.name == self.output).expect("the logits output exists");
        let logits_type = match out.dtype.as_str() {
            "f16" => 10,
            "bf16" => 16,
            _ => 1,
        };
        let nodes = ingraph::SoftLabelNodes {
            logits: self.output.clone(),
            logits_type,
            rank: out.shape.len(),
            vocab: self.vocab_size,
            selectable,
            k,
            temperature,
        };
        let model = ingraph::append(&bytes, &nodes);
        let (threads, spin, ort_lib, device) = self.build.clone();
        let env = super::runtime::environment(ort_lib.as_deref())?;
        let configure = |e: String| Error::teacher(&path, format!("cannot configure a session: {e}"));
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        // An in-memory model finds its external-data files through this folder.
        let folder = dir.to_string_lossy().into_owned();
        let mut builder = session_builder(env, &path, threads, spin)?
            .with_config_entry("session.model_external_initializers_file_folder_path", &folder)
            .map_err(|e| configure(e.to_string()))?;
        // On the device the first session ran on (the CPU if CUDA did not start).
        if let (TeacherDevice::Cuda(id), None) = (device, &self.device_note) {
            let cuda = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| configure(e.to_string()))?;
        }
        let session = builder
            .commit_from_memory(&model)
            .map_err(|e| Error::teacher(&path, format!("the model with the soft-label nodes appended does not load: {e}")))?;
        self.session = session;
        self.inputs.push(InputPlan {
            name: ingraph::LABELS_INPUT.into(),
            dtype: TensorElementType::Int64,
            shape: vec![-1; nodes.rank - 1],
            feed: Feed::HardLabels,
        });
        self.soft_nodes = Some(nodes);
        Ok(())
    }

    /// Whether the session computes the soft labels ([`Teacher::compute_soft_labels_in_graph`]).
    pub fn soft_labels_in_graph(&self) -> bool {
        self.soft_nodes.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opset is read from `opset_import` (field 8 entries of domain "" or "ai.onnx";
    /// others, such as `com.microsoft`, are skipped); varints round-trip.
    #[test]
    fn reads_the_default_opset() {
        let entry = |domain: &str, v: i64| message(8, &[string(1, domain), int_field(2, v)].concat());
        let model = [int_field(1, 8), entry("com.microsoft", 1), entry("", 17), message(7, &[])].concat();
        assert_eq!(default_opset(&model), Some(17));
        assert_eq!(default_opset(&[int_field(1, 8)].concat()), None);
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            varint(v, &mut b);
            assert_eq!(read_varint(&mut b.as_slice()), Some(v));
        }
    }
}
