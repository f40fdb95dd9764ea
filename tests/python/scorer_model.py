"""Writes a small ONNX scoring model and, optionally, golden outputs computed by the Python
`onnxruntime` package, for the scorer's tests.

    scorer_model.py OUT.onnx [--features 20] [--hidden 8] [--outputs 1] [--seed 1]
                    [--golden OUT.json --rows 16]

The model is a two-layer perceptron built with `onnx.helper` (so the same arguments give the
same bytes): input `features` float32 [N, F], output `score` float32 [N, outputs] in 0..1
(sigmoid; a scorer needs one output column, more makes a model of the wrong shape).
`--golden` also writes {"features": F, "values": [...], "scores": [...]}: `rows` seeded random
rows, row-major, and the scores onnxruntime gives them.
"""

import argparse
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(features: int, hidden: int, outputs: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.5, size=(features, hidden)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, size=(hidden,)).astype(np.float32)
    w2 = rng.normal(0.0, 0.5, size=(hidden, outputs)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, size=(outputs,)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"sluice-test-mlp-{features}x{hidden}-seed{seed}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["rows", features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["rows", outputs])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="sluice-tests",
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--outputs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--golden")
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()
    model = build(args.features, args.hidden, args.outputs, args.seed)
    onnx.save(model, args.out)
    if args.golden:
        import onnxruntime

        rng = np.random.default_rng(args.seed + 1000)
        values = rng.uniform(0.0, 1.0, size=(args.rows, args.features)).astype(np.float32)
        session = onnxruntime.InferenceSession(args.out, providers=["CPUExecutionProvider"])
        (scores,) = session.run(["score"], {"features": values})
        with open(args.golden, "w") as out:
            json.dump(
                {
                    "features": args.features,
                    "values": [float(v) for v in values.reshape(-1)],
                    "scores": [float(s) for s in scores.reshape(-1)],
                },
                out,
            )


if __name__ == "__main__":
    main()
