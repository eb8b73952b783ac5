//! What an ONNX model file refers to besides itself (stage one only): the external-data
//! files its tensors keep their weights in (`model.onnx` + `model.onnx_data`, the layout of
//! every model over 2 GB), so that the teacher's fingerprint covers the weights and not
//! only the graph.
//!
//! The model is a protobuf (`onnx.proto`); this walks its wire format without decoding it,
//! skipping every field except the few that lead to tensors: `ModelProto.graph` (7) and
//! `functions` (25); `GraphProto.node` (1), `initializer` (5), `sparse_initializer` (15);
//! `NodeProto.attribute` (5); `AttributeProto.t` (5), `g` (6), `tensors` (10), `graphs`
//! (11), `sparse_tensor` (22), `sparse_tensors` (23); `FunctionProto.node` (7);
//! `SparseTensorProto.values` (1), `indices` (2); and in a `TensorProto` its
//! `external_data` (13) entries, whose `location` key names the file. Large embedded
//! weights (`raw_data`) are skipped by seeking, so a 2 GB graph is not read into memory.

use std::io::{BufReader, Read, Seek};
use std::path::Path;

use crate::error::{Error, Result};

/// The message types on the way from a model to its tensors.
#[derive(Clone, Copy)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Function,
    SparseTensor,
    Tensor,
    /// `StringStringEntryProto` of a tensor's `external_data`.
    Entry,
}

impl Message {
    /// The message a length-delimited field `number` of `self` holds, if it is followed.
    fn child(self, number: u64) -> Option<Message> {
        use Message::*;
        match (self, number) {
            (Model, 7) => Some(Graph),
            (Model, 25) => Some(Function),
            (Graph, 1) | (Function, 7) => Some(Node),
            (Graph, 5) => Some(Tensor),
            (Graph, 15) => Some(SparseTensor),
            (Node, 5) => Some(Attribute),
            (Attribute, 5) | (Attribute, 10) => Some(Tensor),
            (Attribute, 6) | (Attribute, 11) => Some(Graph),
            (Attribute, 22) | (Attribute, 23) => Some(SparseTensor),
            (SparseTensor, 1) | (SparseTensor, 2) => Some(Tensor),
            (Tensor, 13) => Some(Entry),
            _ => None,
        }
    }
}

/// A tensor's weights kept in another file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// The tensor's name (empty where the file gives none).
    pub tensor: String,
    /// The file, as written in the model (ONNX Runtime reads it relative to the model's
    /// directory).
    pub location: String,
}

/// The external-data locations the tensors of the model at `path` name, each once, in the
/// order first seen, with the first tensor that names each. Every tensor counts, used by the
/// graph or not.
pub fn external_data_locations(path: &Path) -> Result<Vec<ExternalData>> {
    let (file, len) = crate::untrusted::open(path, crate::untrusted::Cap::Weights)?;
    let mut walker = Walker { input: BufReader::with_capacity(1 << 16, file), at: 0, locations: Vec::new() };
    walker
        .message(Message::Model, len, 0)
        .map_err(|m| Error::teacher(path, format!("not a loadable ONNX model (not a readable protobuf: {m})")))?;
    Ok(walker.locations)
}

struct Walker<R> {
    input: BufReader<R>,
    /// Byte offset of the next byte `input` returns.
    at: u64,
    locations: Vec<ExternalData>,
}

/// Protobuf nesting deeper than this is refused (subgraphs nest a few levels in practice).
const MAX_DEPTH: usize = 64;

impl<R: Read + Seek> Walker<R> {
    fn byte(&mut self) -> std::result::Result<u8, String> {
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b).map_err(|e| format!("at byte {}: {e}", self.at))?;
        self.at += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a varint at byte {} is too long", self.at))
    }

    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        let n = i64::try_from(n).map_err(|_| "a field length overflows".to_string())?;
        self.input.seek_relative(n).map_err(|e| format!("at byte {}: {e}", self.at))?;
        self.at += n as u64;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> std::result::Result<Vec<u8>, String> {
        let mut buf = vec![0u8; usize::try_from(n).map_err(|_| "a field length overflows".to_string())?];
        self.input.read_exact(&mut buf).map_err(|e| format!("at byte {}: {e}", self.at))?;
        self.at += n;
        Ok(buf)
    }

    /// Walk the fields of one `kind` message up to byte `end`; an `Entry` returns its
    /// location, if it is one.
    fn message(&mut self, kind: Message, end: u64, depth: usize) -> std::result::Result<Option<String>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("messages nest deeper than {MAX_DEPTH} levels"));
        }
        let (mut key, mut value) = (None::<Vec<u8>>, None::<Vec<u8>>);
        let (mut name, mut locations) = (None::<Vec<u8>>, Vec::new());
        while self.at < end {
            let tag = self.varint()?;
            let (number, wire) = (tag >> 3, tag & 7);
            match wire {
                0 => {
                    self.varint()?;
                }
                1 => self.skip(8)?,
                5 => self.skip(4)?,
                2 => {
                    let len = self.varint()?;
                    let field_end = self
                        .at
                        .checked_add(len)
                        .filter(|&e| e <= end)
                        .ok_or_else(|| format!("field {number} at byte {} runs past the end of its message", self.at))?;
                    match (kind, number, kind.child(number)) {
                        (Message::Entry, 1, _) => key = Some(self.bytes(len)?),
                        (Message::Entry, 2, _) => value = Some(self.bytes(len)?),
                        (Message::Tensor, 8, _) => name = Some(self.bytes(len)?),
                        (_, _, Some(child)) => locations.extend(self.message(child, field_end, depth + 1)?),
                        _ => self.skip(len)?,
                    }
                }
                other => return Err(format!("wire type {other} of field {number} at byte {}", self.at)),
            }
        }
        if self.at != end {
            return Err(format!("a message ends at byte {}, past its length (byte {end})", self.at));
        }
        if let (Message::Entry, Some(k), Some(v)) = (kind, key, value)
            && k == b"location"
        {
            return String::from_utf8(v).map(Some).map_err(|_| "an external-data location is not UTF-8".to_string());
        }
        if let Message::Tensor = kind {
            let tensor = String::from_utf8_lossy(&name.unwrap_or_default()).into_owned();
            for location in locations {
                if !self.locations.iter().any(|e| e.location == location) {
                    self.locations.push(ExternalData { tensor: tensor.clone(), location });
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf encoding by hand (the wire format: tag = field << 3 | wire type, then a
    /// varint length for wire type 2).
    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let varint = |mut v: u64, out: &mut Vec<u8>| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        varint(number << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn tensor_at(location: &str) -> Vec<u8> {
        let entry = [field(1, b"location"), field(2, location.as_bytes())].concat();
        let offset = [field(1, b"offset"), field(2, b"0")].concat();
        // name (8), raw bytes skipped elsewhere, then two external_data entries, data_location = 1.
        [field(8, b"w"), field(13, &offset), field(13, &entry), vec![14 << 3, 1]].concat()
    }

    /// Initializers of the main graph and of a subgraph inside an `If` node's attribute
    /// both count; a location named twice is listed once; embedded raw data is skipped.
    #[test]
    fn finds_locations_in_initializers_and_subgraphs() {
        let embedded = [field(8, b"b"), field(9, &vec![7u8; 5000])].concat(); // raw_data = 9
        let sub = [field(5, &tensor_at("sub.bin"))].concat();
        let node = field(5, &field(6, &sub)); // attribute.g
        let graph =
            [field(1, &node), field(5, &tensor_at("model.onnx_data")), field(5, &embedded), field(5, &tensor_at("model.onnx_data"))]
                .concat();
        let model = [vec![1 << 3, 8], field(7, &graph)].concat(); // ir_version = 8, graph
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        std::fs::write(&p, &model).unwrap();
        let found: Vec<(String, String)> = external_data_locations(&p).unwrap().into_iter().map(|e| (e.tensor, e.location)).collect();
        assert_eq!(found, [("w".to_string(), "sub.bin".to_string()), ("w".to_string(), "model.onnx_data".to_string())]);
        // A model without external data names none; a cut file is an error, not a silence.
        std::fs::write(&p, [vec![1 << 3, 8], field(7, &field(5, &embedded))].concat()).unwrap();
        assert!(external_data_locations(&p).unwrap().is_empty());
        std::fs::write(&p, &model[..model.len() - 3]).unwrap();
        assert!(external_data_locations(&p).is_err());
    }
}
