"""Fixtures for the failure tests (tests/failures.rs).

nan_teacher.onnx: logits = Log(x), input `x` [batch, 4] float32 -> output `logits`
[batch, 4]. A negative feature gives a NaN logit, zero gives -inf: a teacher that
produces non-finite logits on some rows, as a broken export or an overflow would.
rows.jsonl: 6 rows of `x`; row 3 has a negative value.

Run from the repo root: python data/bad/make_fixtures.py   (needs onnx)
"""
import json
import os

import onnx
from onnx import TensorProto, helper

here = os.path.dirname(os.path.abspath(__file__))
graph = helper.make_graph(
    [helper.make_node("Log", ["x"], ["logits"])],
    "nan_teacher",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="distill-fixtures")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, os.path.join(here, "nan_teacher.onnx"))
with open(os.path.join(here, "rows.jsonl"), "w") as f:
    for i in range(6):
        x = [1.0 + i, 2.0, 3.0, 0.5]
        if i == 3:
            x[1] = -1.0
        f.write(json.dumps({"x": x, "label": i % 4}) + "\n")
print("wrote nan_teacher.onnx rows.jsonl")
