"""Make the hidden-state teachers: copies of the fixture teachers with intermediate values
as extra graph outputs, for `cache-teacher --hidden-states`.

The weights, the nodes and the `logits` output are the original file's; each new output is
an Identity node over a value the original graph computes already:

data/textcls/teacher-hidden.onnx -- data/textcls/teacher.onnx plus
    `pooled` f32 [batch, 128]: BERT's pooler output (tanh over the [CLS] token's last hidden
        state), the input of the classifier;
    `last_hidden_state` f32 [batch, seq, 128]: the last encoder layer's output.
data/digits/teacher-hidden.onnx -- data/digits/teacher.onnx plus
    `hidden` f32 [batch, 512]: the second hidden layer's activations (after its ReLU),
        the input of the output layer;
data/lm/teacher-hidden.onnx -- data/lm/teacher.onnx plus
    `hidden` f32 [batch, seq, 128]: the final RMSNorm's output, the input of the LM head
        (transformers' `hidden_states[-1]`).

This is how a user adds an output to an export they have: find the value's name (Netron,
or `[o for n in onnx.load(p).graph.node for o in n.output]`), then append an Identity node
and a graph output as below.

Run from the repo root:  python data/add_hidden_outputs.py
Needs: onnx (data/requirements-make.txt).
"""
import os

import onnx
from onnx import TensorProto, helper

here = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    "textcls": [
        ("pooled", "/m/bert/pooler/activation/Tanh_output_0", ["batch", 128]),
        ("last_hidden_state", "/m/bert/encoder/layer.3/output/LayerNorm/LayerNormalization_output_0", ["batch", "seq", 128]),
    ],
    "digits": [
        ("hidden", "/4/Relu_output_0", ["batch", 512]),
    ],
    "lm": [
        ("hidden", "/lm/model/norm/Mul_1_output_0", ["batch", "seq", 128]),
    ],
}

for folder, outputs in MODELS.items():
    model = onnx.load(os.path.join(here, folder, "teacher.onnx"))
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    for name, value, shape in outputs:
        assert value in produced, f"{folder}: the graph computes no value named {value}"
        graph.node.append(helper.make_node("Identity", [value], [name], name=f"hidden_output_{name}"))
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    out = os.path.join(here, folder, "teacher-hidden.onnx")
    onnx.save(model, out)
    print("wrote", out, "outputs", [o.name for o in graph.output])
