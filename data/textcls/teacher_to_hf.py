"""Rebuild the text-classification teacher as a Hugging Face checkpoint from teacher.onnx.

The export keeps every weight: named initializers (`m.bert.embeddings...`, the biases,
the LayerNorms, the pooler and classifier) carry their PyTorch names under the export
wrapper's `m.`; the Linear weights of the encoder layers are unnamed MatMul inputs
(`onnx::MatMul_N`, stored [in, out]) and take the name of the node that reads them
(`/m/bert/encoder/layer.3/output/dense/MatMul` -> `bert.encoder.layer.3.output.dense.weight`,
transposed). The config is make_teacher.py's BertConfig. The rebuilt model's logits are
checked against onnxruntime's on the test split before anything is written.

Writes OUT (default target/textcls-teacher-hf): config.json, model.safetensors,
tokenizer.json, as `save_pretrained` writes them. `distill init-student --from OUT` then
copies teacher layers into a smaller student (DistilBERT's initialisation).

Run from the repo root:  python data/textcls/teacher_to_hf.py [OUT]
Needs: torch transformers onnx onnxruntime tokenizers pyarrow (data/requirements-make.txt).
"""
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer
from transformers import BertConfig, BertForSequenceClassification

here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "target", "textcls-teacher-hf")
teacher = os.path.join(here, "teacher.onnx")

graph = onnx.load(teacher).graph
weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
state = {}
for name, w in weights.items():
    if name.startswith("m."):
        state[name[2:]] = w
for node in graph.node:
    if node.op_type == "MatMul":
        w = [x for x in node.input if x.startswith("onnx::MatMul")]
        if w:
            path = node.name.strip("/").split("/")[1:-1]  # m/bert/encoder/layer.3/output/dense/MatMul
            state[".".join(path) + ".weight"] = weights[w[0]].T

config = BertConfig(vocab_size=weights["m.bert.embeddings.word_embeddings.weight"].shape[0], hidden_size=128,
                    num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, max_position_embeddings=128,
                    num_labels=8)
model = BertForSequenceClassification(config).eval()
expected = set(model.state_dict()) - {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}
missing = expected - set(state)
assert not missing, f"weights not found in the export: {sorted(missing)}"
model.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)

# The rebuilt model computes the export's logits.
tok = Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
texts = pq.read_table(os.path.join(here, "test.parquet")).column("text").to_pylist()[:64]
ids = [tok.encode(t).ids[:64] for t in texts]
n = max(len(i) for i in ids)
x = np.zeros((len(ids), n), dtype=np.int64)
mask = np.zeros_like(x)
for i, s in enumerate(ids):
    x[i, :len(s)], mask[i, :len(s)] = s, 1
want = ort.InferenceSession(teacher).run(["logits"], {"input_ids": x, "attention_mask": mask, "token_type_ids": np.zeros_like(x)})[0]
with torch.no_grad():
    got = model(input_ids=torch.tensor(x), attention_mask=torch.tensor(mask)).logits.numpy()
err = np.abs(got - want).max()
assert err < 1e-4, f"rebuilt logits differ from onnxruntime's by {err}"

model.save_pretrained(out)
shutil.copy(os.path.join(here, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
print(f"wrote {out} (logits equal onnxruntime's within {err:.1e})")
