"""Make the teacher-export fixtures: one tiny causal LM exported the ways users bring it.

The model: a `transformers` LlamaForCausalLM with random weights (torch.manual_seed(0),
initializer_range 0.3 so the logits spread like a trained model's, std ~2.4, rather
than being almost uniform), vocab 4096 (the size of data/lm/tokenizer.json: <|pad|> 0,
<|bos|> 1, <|eos|> 2), hidden 64, 2 layers, 4 attention heads and 2 key/value heads
(grouped-query attention, head_dim 16), SwiGLU 128, RoPE, max_position_embeddings 256,
tied embeddings. It is saved with save_pretrained to a temporary checkpoint and
exported from there with optimum-onnx (`optimum-cli export onnx`, the TorchScript
exporter, opset 18). Every folder below holds one export:

gqa-with-past/model.onnx -- `optimum-cli export onnx --task text-generation-with-past`:
    inputs input_ids, attention_mask [batch, past+seq] int64, position_ids int64,
    past_key_values.{0,1}.{key,value} f32 [batch, 2, past_seq, 16];
    outputs logits f32 [batch, seq, 4096], present.{0,1}.{key,value}.
    With config.json, generation_config.json (as optimum writes them) and tokenizer.json
    (a copy of data/lm/tokenizer.json).
text-generation/model.onnx -- `optimum-cli export onnx --task text-generation`:
    inputs input_ids, attention_mask, position_ids [batch, seq] int64; output logits
    f32 [batch, seq, 4096]. With config.json, generation_config.json.
merged/decoder_model_merged.onnx -- the legacy merged decoder that optimum < 2 wrote
    for `--task text-generation-with-past`: one If node on a `use_cache_branch` bool [1]
    input choosing the with-past subgraph (then) or the without-past one (else); inputs
    as gqa-with-past plus use_cache_branch, outputs logits + present.*. Made with
    optimum's own export + merge: `optimum.exporters.onnx.main_export(task=
    "text-generation-with-past")` with its decoder split restored to the legacy pair
    (decoder_model without past inputs + decoder_with_past_model, by replacing
    optimum.exporters.utils.get_decoder_models_for_export for the call), so that
    optimum's post-processing runs `optimum.onnx.merge_decoders` on the pair and
    validates both branches. Only the merged file is kept (the two halves are
    dropped), with config.json, generation_config.json.
fp16/model.onnx -- `optimum-cli export onnx --task text-generation --dtype fp16`:
    fp16 weights and activations, output logits float16 [batch, seq, 4096]; runs on
    onnxruntime's CPU provider. With config.json, generation_config.json.
bf16-logits/model.onnx -- text-generation/model.onnx plus one final Cast(to=BFLOAT16)
    of the logits: output logits bfloat16 [batch, seq, 4096] (onnxruntime CPU runs it;
    its Python API cannot turn a bfloat16 tensor into numpy, so the check below reads
    the output's raw bits through IOBinding).
external-data/model.onnx + model.onnx_data -- text-generation/model.onnx re-saved with
    onnx.save(..., save_as_external_data=True, all_tensors_to_one_file=True,
    location="model.onnx_data", size_threshold=1024): the graph file is small, the
    weights are in model.onnx_data.
pruned-head/model.onnx -- text-generation/model.onnx with the LM head pruned to the
    last position, as onnxruntime-genai's prune_lm_head option does: a Slice of the
    final hidden states on the sequence axis (starts -1, ends INT64_MAX) before the LM
    head MatMul; output logits f32 [batch, 1, 4096] (static 1).
padded-vocab/model.onnx -- logits wider than the tokenizer, like Qwen2.5-7B (152064
    logits for 151665 tokens): the same model with vocab_size 4160, whose (tied)
    embedding / LM head matrix is the 4096 rows above plus 64 padding rows of random
    values drawn like the real rows (N(0, 0.3^2), seed 1), so ids 4096..4159 hold real
    probability mass (~1.5% at T=2) and one of them would rank in the top 8 at some
    positions if padding were not excluded; `optimum-cli export onnx --task text-generation`; output logits f32
    [batch, seq, 4160] whose first 4096 columns equal text-generation's. With
    config.json (vocab_size 4160), generation_config.json and tokenizer.json (a copy
    of data/lm/tokenizer.json, 4096 tokens).

Each export is loaded and run with onnxruntime (CPU) on a batch of 2 right-padded rows
(attention_mask 0 on the padding, position_ids = cumsum(mask) - 1 with 1 on padding,
as optimum's ORTModelForCausalLM does), its inputs and outputs are printed, and its
logits at the real positions are checked against a run of each row alone and against
text-generation/model.onnx.

Run from the repo root:  python data/exports/make_exports.py
Needs: torch==2.9.0 transformers==4.57.6 optimum-onnx==0.1.0 accelerate onnx
onnxruntime numpy tokenizers (data/requirements-make.txt); takes about a minute on CPU.
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)
here = os.path.dirname(os.path.abspath(__file__))
data = os.path.dirname(here)
tokenizer_json = os.path.join(data, "lm", "tokenizer.json")
tmp = tempfile.mkdtemp(prefix="distill-exports-")
cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
VOCAB, PADDED = 4096, 4160


def config(vocab):
    return LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


types = {}


def run(sess, feed):
    """All outputs as numpy; bfloat16 ones (which onnxruntime's numpy bridge refuses)
    are read as raw bits through IOBinding and widened exactly to float32."""
    io = sess.io_binding()
    for k, v in feed.items():
        io.bind_cpu_input(k, v)
    names = [o.name for o in sess.get_outputs()]
    for k in names:
        io.bind_output(k, "cpu")
    sess.run_with_iobinding(io)
    out = {}
    types.clear()
    for k, v in zip(names, io.get_outputs()):
        if v.data_type() == "tensor(bfloat16)":
            n = int(np.prod(v.shape()))
            bits = np.frombuffer(ctypes.string_at(v.data_ptr(), 2 * n), dtype=np.uint16).reshape(v.shape())
            out[k] = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            out[k] = v.numpy()
        types[k] = v.data_type()
    return out


def shape(v):
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


# ---- the tiny checkpoints ----------------------------------------------------
torch.manual_seed(0)
model = LlamaForCausalLM(config(VOCAB)).eval()
ckpt = os.path.join(tmp, "ckpt")
model.save_pretrained(ckpt)
print("params", sum(p.numel() for p in model.parameters()))

padded = LlamaForCausalLM(config(PADDED)).eval()
state = model.state_dict()
g = torch.Generator().manual_seed(1)
extra = torch.randn(PADDED - VOCAB, 64, generator=g) * 0.3
state["model.embed_tokens.weight"] = torch.cat([state["model.embed_tokens.weight"], extra])
state["lm_head.weight"] = state["model.embed_tokens.weight"]
padded.load_state_dict(state)
ckpt_padded = os.path.join(tmp, "ckpt-padded")
padded.save_pretrained(ckpt_padded)


def fresh(name):
    d = os.path.join(here, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def optimum(src, task, name, *extra_args, keep=("model.onnx",), tokenizer=False):
    out = os.path.join(tmp, name)
    subprocess.run([cli, "export", "onnx", "-m", src, "--task", task, *extra_args, out], check=True)
    d = fresh(name)
    for f in [*keep, "config.json", "generation_config.json"]:
        shutil.copyfile(os.path.join(out, f), os.path.join(d, f))
    if tokenizer:
        shutil.copyfile(tokenizer_json, os.path.join(d, "tokenizer.json"))
    return d


# ---- 1, 2, 4, 8: optimum-cli exports -----------------------------------------
optimum(ckpt, "text-generation-with-past", "gqa-with-past", tokenizer=True)
tg = optimum(ckpt, "text-generation", "text-generation")
optimum(ckpt, "text-generation", "fp16", "--dtype", "fp16")
optimum(ckpt_padded, "text-generation", "padded-vocab", tokenizer=True)

# ---- 3: legacy merged decoder (optimum's merge_decoders) ----------------------
import optimum.exporters.utils as exporter_utils  # noqa: E402
from optimum.exporters.onnx import main_export  # noqa: E402


def legacy_decoder_models(model, export_config):
    """The pre-2.0 split: decoder_model (no past inputs) + decoder_with_past_model."""
    def cfg(past_in_inputs):
        return export_config.__class__(
            model.config, task=export_config.task, int_dtype=export_config.int_dtype,
            float_dtype=export_config.float_dtype, use_past=True, use_past_in_inputs=past_in_inputs,
        )
    return {"decoder_model": (model, cfg(False)), "decoder_with_past_model": (model, cfg(True))}


split = exporter_utils.get_decoder_models_for_export
exporter_utils.get_decoder_models_for_export = legacy_decoder_models
try:
    merged_out = os.path.join(tmp, "merged")
    main_export(ckpt, merged_out, task="text-generation-with-past")
finally:
    exporter_utils.get_decoder_models_for_export = split
d = fresh("merged")
for f in ["decoder_model_merged.onnx", "config.json", "generation_config.json"]:
    shutil.copyfile(os.path.join(merged_out, f), os.path.join(d, f))


# ---- 5, 6, 7: edits of the text-generation export ----------------------------
def load_tg():
    return onnx.load(os.path.join(tg, "model.onnx"))


def copy_configs(d):
    for f in ["config.json", "generation_config.json"]:
        shutil.copyfile(os.path.join(tg, f), os.path.join(d, f))


def rename_output(m, old, new):
    for n in m.graph.node:
        for i, o in enumerate(n.output):
            if o == old:
                n.output[i] = new
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new


# bf16-logits
m = load_tg()
rename_output(m, "logits", "logits_float")
m.graph.node.append(helper.make_node("Cast", ["logits_float"], ["logits"], to=TensorProto.BFLOAT16,
                                     name="/lm_head/Cast_to_bfloat16"))
m.graph.output[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
onnx.checker.check_model(m)
d = fresh("bf16-logits")
onnx.save(m, os.path.join(d, "model.onnx"))
copy_configs(d)

# external-data
m = load_tg()
d = fresh("external-data")
onnx.save(m, os.path.join(d, "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
          location="model.onnx_data", size_threshold=1024)
copy_configs(d)

# pruned-head
m = load_tg()
head = [n for n in m.graph.node if "logits" in n.output]
assert len(head) == 1 and head[0].op_type == "MatMul", head
head = head[0]
hidden = head.input[0]
for name, value in [("starts", -1), ("ends", np.iinfo(np.int64).max), ("axes", 1)]:
    m.graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.int64), f"/lm_head/prune/{name}"))
i = list(m.graph.node).index(head)
m.graph.node.insert(i, helper.make_node(
    "Slice", [hidden, "/lm_head/prune/starts", "/lm_head/prune/ends", "/lm_head/prune/axes"],
    ["/lm_head/prune/last_hidden"], name="/lm_head/prune/Slice"))
head.input[0] = "/lm_head/prune/last_hidden"
out = m.graph.output[0]
out.type.tensor_type.shape.dim[1].Clear()
out.type.tensor_type.shape.dim[1].dim_value = 1
del m.graph.value_info[:]
inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
assert shape(inferred.graph.output[0]) == ["batch_size", 1, VOCAB], shape(inferred.graph.output[0])
onnx.checker.check_model(m)
d = fresh("pruned-head")
onnx.save(m, os.path.join(d, "model.onnx"))
copy_configs(d)


# ---- checks ------------------------------------------------------------------
tok = Tokenizer.from_file(tokenizer_json)
with open(os.path.join(data, "inputs", "jsonl", "lm-300.jsonl")) as f:
    texts = [json.loads(next(f))["text"] for _ in range(2)]
rows = [tok.encode(texts[0]).ids[:12], tok.encode(texts[1]).ids[:7]]
seq = max(map(len, rows))
ids = np.zeros((2, seq), dtype=np.int64)
mask = np.zeros((2, seq), dtype=np.int64)
for r, t in enumerate(rows):
    ids[r, :len(t)] = t
    mask[r, :len(t)] = 1
pos = np.where(mask == 1, np.cumsum(mask, 1) - 1, 1)


def feed_for(sess, ids, mask, pos, use_cache_branch=False):
    feed = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = ids
        elif i.name == "attention_mask":
            feed[i.name] = mask
        elif i.name == "position_ids":
            feed[i.name] = pos
        elif i.name.startswith("past_key_values."):
            dt = np.float16 if i.type == "tensor(float16)" else np.float32
            feed[i.name] = np.zeros((ids.shape[0], 2, 0, 16), dtype=dt)
        elif i.name == "use_cache_branch":
            feed[i.name] = np.array([use_cache_branch])
        else:
            raise KeyError(i.name)
    return feed


files = {
    "gqa-with-past": "gqa-with-past/model.onnx",
    "text-generation": "text-generation/model.onnx",
    "merged": "merged/decoder_model_merged.onnx",
    "fp16": "fp16/model.onnx",
    "bf16-logits": "bf16-logits/model.onnx",
    "external-data": "external-data/model.onnx",
    "pruned-head": "pruned-head/model.onnx",
    "padded-vocab": "padded-vocab/model.onnx",
}
tolerance = {"fp16": 0.1, "bf16-logits": 0.1}  # |logits| < 16: bf16 steps are <= 1/16
base = None
for name, rel in files.items():
    path = os.path.join(here, rel)
    m = onnx.load(path, load_external_data=False)
    print(f"\n{rel}  ({os.path.getsize(path)} bytes, opset {m.opset_import[0].version}, {len(m.graph.node)} nodes)")
    for kind, vs in [("input ", m.graph.input), ("output", m.graph.output)]:
        for v in vs:
            print(f"  {kind} {v.name:28s} {TensorProto.DataType.Name(v.type.tensor_type.elem_type):8s} {shape(v)}")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    branches = [False, True] if name == "merged" else [False]
    for branch in branches:
        out = run(sess, feed_for(sess, ids, mask, pos, branch))
        logits = out["logits"].astype(np.float32)
        print("  ran:", {k: (types[k], list(v.shape)) for k, v in out.items()},
              f"use_cache_branch={branch}" if name == "merged" else "")
        if base is None:
            base = logits
        tol = tolerance.get(name, 1e-4)
        for r, t in enumerate(rows):
            n = len(t)
            alone = run(sess, feed_for(sess, ids[r:r + 1, :n], mask[r:r + 1, :n], pos[r:r + 1, :n], branch))["logits"]
            alone = alone.astype(np.float32)
            if name == "pruned-head":
                assert logits.shape == (2, 1, VOCAB) and alone.shape == (1, 1, VOCAB)
                np.testing.assert_allclose(alone[0, 0], base[r, n - 1], atol=tol, rtol=0)
                if n == seq:
                    np.testing.assert_allclose(logits[r, 0], base[r, n - 1], atol=tol, rtol=0)
                continue
            np.testing.assert_allclose(logits[r, :n], alone[0], atol=tol, rtol=0)
            np.testing.assert_allclose(logits[r, :n, :VOCAB], base[r, :n], atol=tol, rtol=0)
        if name == "padded-vocab":
            assert logits.shape[-1] == PADDED
            z = logits[0, :len(rows[0])].astype(np.float64) / 2
            p = np.exp(z - z.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            top8 = np.argsort(-z, axis=-1, kind="stable")[:, :8]
            print(f"  padding ids {VOCAB}..{PADDED - 1} hold {p[:, VOCAB:].sum(-1).mean():.4f} of the mass at T=2 "
                  f"(mean over row 0); a padding id is in the top 8 of all {PADDED} at "
                  f"{int((top8 >= VOCAB).any(-1).sum())} of its {len(z)} positions")
    print("  ok")

shutil.rmtree(tmp)
print("\nfiles:")
for root, _, fs in sorted(os.walk(here)):
    for f in sorted(fs):
        p = os.path.join(root, f)
        print(f"  {os.path.relpath(p, data)}  {os.path.getsize(p)}")
