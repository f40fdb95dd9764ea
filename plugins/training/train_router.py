#!/usr/bin/env python3
"""Trains the default router's scorer model from routing outcomes Sluice recorded.

Reads the `route_outcomes` table of a Sluice history store (SQLite; `[store] path`), keeps the
rows of one feature vector version (v1: 18 columns, see `plugins/rust/router/src/lib.rs`), and
fits a small multilayer perceptron that predicts each placement's outcome quality (0..=1: 0 for
a stream that failed or got no message, else 1 / (1 + time to first message / 50 ms)). The model
is written as ONNX for the `[scorer]`: one float32 input `features` [rows, 18], one float32
output `score` [rows, 1]. The features' standardisation is part of the graph, so the router
sends raw features.

    python plugins/training/train_router.py --store sluice-history.db --out router-model.onnx

Deterministic for a given store and `--seed`. Needs numpy and onnx (both in the project's test
requirements). Prints a JSON summary: rows used, and the mean absolute error on a held-out fifth
against a constant baseline. Load the result as `[scorer] shadow_model` first, watch its
agreement and error in `GET /api/v1/scorer`, then `POST /api/v1/scorer/promote`.
"""

import argparse
import json
import sqlite3
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURE_VERSIONS = {18: "v1"}


def load(store, columns, since_ms):
    """The feature rows and quality labels of `columns`-wide outcomes since `since_ms`."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT features, quality FROM route_outcomes "
            "WHERE columns = ? AND ts_ms >= ? ORDER BY ts_ms, id",
            (columns, since_ms),
        ).fetchall()
    except sqlite3.OperationalError as error:
        raise SystemExit(f"{store}: not a Sluice store with routing outcomes ({error})")
    finally:
        db.close()
    features = [np.frombuffer(blob, dtype="<f4") for blob, _ in rows]
    features = [f for f in features if f.shape == (columns,)]
    if len(features) != len(rows):
        raise SystemExit(f"{store}: some feature rows are not {columns} float32 values")
    x = np.stack(features).astype(np.float64) if features else np.zeros((0, columns))
    y = np.array([q for _, q in rows], dtype=np.float64)
    return x, y


def train(x, y, hidden, epochs, seed):
    """Fits tanh MLP -> sigmoid by full-batch Adam on the squared error; returns the weights."""
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-6] = 1.0
    z = (x - mean) / std
    w1 = rng.normal(0.0, 1.0 / np.sqrt(x.shape[1]), (x.shape[1], hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, 1))
    b2 = np.zeros(1)
    params = [w1, b1, w2, b2]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    rate, beta1, beta2 = 0.01, 0.9, 0.999
    target = y.reshape(-1, 1)
    for step in range(1, epochs + 1):
        h = np.tanh(z @ w1 + b1)
        out = 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))
        grad_out = 2.0 * (out - target) / len(z) * out * (1.0 - out)
        grad_w2 = h.T @ grad_out
        grad_b2 = grad_out.sum(axis=0)
        grad_h = grad_out @ w2.T * (1.0 - h**2)
        grad_w1 = z.T @ grad_h
        grad_b1 = grad_h.sum(axis=0)
        for i, grad in enumerate([grad_w1, grad_b1, grad_w2, grad_b2]):
            m, v = moments[i]
            m[...] = beta1 * m + (1 - beta1) * grad
            v[...] = beta2 * v + (1 - beta2) * grad**2
            m_hat = m / (1 - beta1**step)
            v_hat = v / (1 - beta2**step)
            params[i] -= rate * m_hat / (np.sqrt(v_hat) + 1e-8)
    return mean, std, params


def predict(model, x):
    mean, std, (w1, b1, w2, b2) = model
    h = np.tanh(((x - mean) / std) @ w1 + b1)
    return (1.0 / (1.0 + np.exp(-(h @ w2 + b2)))).ravel()


def to_onnx(model, columns, name):
    """The model as an ONNX graph: (x - mean) / std -> MatMul/Add/Tanh -> MatMul/Add/Sigmoid."""
    mean, std, (w1, b1, w2, b2) = model
    f32 = lambda a, n: numpy_helper.from_array(np.asarray(a, dtype=np.float32), n)
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Tanh", ["h1b"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["rows", columns])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["rows", 1])],
        [f32(mean, "mean"), f32(std, "std"), f32(w1, "w1"), f32(b1, "b1"), f32(w2, "w2"), f32(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice-train-router")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="the Sluice history store (SQLite)")
    parser.add_argument("--out", required=True, help="where to write the .onnx model")
    parser.add_argument("--columns", type=int, default=18, help="feature vector width (18: v1)")
    parser.add_argument("--since-ms", type=int, default=0, help="only outcomes from this Unix ms on")
    parser.add_argument("--min-rows", type=int, default=50, help="refuse to train on fewer rows")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.columns not in FEATURE_VERSIONS:
        raise SystemExit(f"--columns {args.columns}: known feature vectors have {sorted(FEATURE_VERSIONS)} columns")

    x, y = load(args.store, args.columns, args.since_ms)
    if len(y) < args.min_rows:
        raise SystemExit(f"{args.store}: {len(y)} recorded outcomes; at least {args.min_rows} are needed")
    # A fixed shuffle, then a held-out fifth to report the error on.
    order = np.random.default_rng(args.seed).permutation(len(y))
    cut = max(1, len(y) // 5)
    test, fit = order[:cut], order[cut:]
    model = train(x[fit], y[fit], args.hidden, args.epochs, args.seed)
    held_out = float(np.abs(predict(model, x[test]) - y[test]).mean())
    baseline = float(np.abs(y[fit].mean() - y[test]).mean())
    # The shipped model learns from every row once the hold-out has measured the method.
    model = train(x, y, args.hidden, args.epochs, args.seed)
    onnx.save(to_onnx(model, args.columns, f"sluice-router-{FEATURE_VERSIONS[args.columns]}"), args.out)
    print(json.dumps({
        "rows": int(len(y)),
        "features": args.columns,
        "feature_version": FEATURE_VERSIONS[args.columns],
        "held_out_mae": round(held_out, 4),
        "baseline_mae": round(baseline, 4),
        "mean_quality": round(float(y.mean()), 4),
        "out": args.out,
    }))


if __name__ == "__main__":
    sys.exit(main())
