"""Rewrite Moonshine's int8-weight ORT models as plain fp32 ONNX models (run by fetch-models.sh).

moonshine-cpp ships encoder_model.ort and decoder_model_merged.ort with their weights stored as int8
and turned back into float by Cast -> Mul (-> Add) nodes that run on *every* inference: for the
decoder that is ~33 M weights dequantised per generated token, about 50 ms of a ~62 ms step on one
core. Folding those chains into float initializers once gives the same numbers (max |diff| ~1e-5 in
the logits) at ~15 ms a step, so a 3 s utterance is transcribed in ~0.2 s instead of ~0.7 s.

Usage: python moonshine-fp32.py MODEL_DIR
Reads MODEL_DIR/{encoder_model,decoder_model_merged}.ort, writes MODEL_DIR/*.fp32.onnx, and checks
each new model against the original on a fixed input before it replaces anything. Needs onnxruntime,
onnx and numpy (fetch-models.sh installs pinned versions into a venv).
"""

import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

FOLDABLE = ("Cast", "Mul", "Add")


def to_onnx(ort_path: str, onnx_path: str) -> None:
    """Has ONNX Runtime load the .ort model and write it back out in the ONNX format."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = onnx_path
    ort.InferenceSession(ort_path, so, providers=["CPUExecutionProvider"])


def fold(src: str, dst: str) -> int:
    """Evaluates every Cast/Mul/Add whose inputs are all constants; returns how many it folded."""
    m = onnx.load(src)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consts = {}

    def value(name):
        if name in consts:
            return consts[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return None

    nodes = list(g.node)
    folded = 0
    changed = True
    while changed:
        changed = False
        rest = []
        for n in nodes:
            args = [value(i) for i in n.input]
            if n.op_type in FOLDABLE and args and all(a is not None for a in args):
                if n.op_type == "Cast":
                    to = next(a.i for a in n.attribute if a.name == "to")
                    out = args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(to))
                elif n.op_type == "Mul":
                    out = args[0] * args[1]
                else:
                    out = args[0] + args[1]
                consts[n.output[0]] = out
                folded += 1
                changed = True
            else:
                rest.append(n)
        nodes = rest

    used = {o.name for o in g.output}

    def collect(graph):
        for n in graph.node:
            used.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)

    del g.node[:]
    g.node.extend(nodes)
    collect(g)
    kept = [t for t in g.initializer if t.name in used]
    for name, v in consts.items():
        if name in used:
            kept.append(numpy_helper.from_array(v, name))
    del g.initializer[:]
    g.initializer.extend(kept)

    # ORT writes subgraphs without names; the ONNX checker (and ORT's loader) require them.
    def name_graphs(graph, prefix):
        for i, n in enumerate(graph.node):
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    if not a.g.name:
                        a.g.name = f"{prefix}_{i}_{a.name}"
                    name_graphs(a.g, a.g.name)

    name_graphs(g, "main")
    onnx.save(m, dst)
    return folded


def feeds_for(session, seconds: float = 2.0):
    """A fixed input for either model (encoder: audio; decoder: the first step)."""
    rng = np.random.RandomState(7)
    names = [i.name for i in session.get_inputs()]
    if "input_values" in names:
        return {"input_values": (rng.randn(1, int(16000 * seconds)) * 0.1).astype(np.float32)}
    f = {
        "input_ids": np.array([[1]], dtype=np.int64),
        "encoder_hidden_states": rng.randn(1, 50, 416).astype(np.float32),
        "use_cache_branch": np.array([False]),
    }
    for n in names:
        if n.startswith("past_key_values."):
            f[n] = np.zeros((1, 8, 0, 52), np.float32)
    return f


def same_outputs(a_path: str, b_path: str) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    a = ort.InferenceSession(a_path, so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(b_path, so, providers=["CPUExecutionProvider"])
    f = feeds_for(a)
    ya, yb = a.run(None, f)[0], b.run(None, f)[0]
    if ya.shape != yb.shape:
        raise SystemExit(f"{b_path}: output shape {yb.shape} != {ya.shape}")
    return float(np.max(np.abs(ya - yb)) / (np.max(np.abs(ya)) + 1e-9))


def main() -> None:
    d = sys.argv[1]
    for name in ("encoder_model", "decoder_model_merged"):
        src = os.path.join(d, name + ".ort")
        dst = os.path.join(d, name + ".fp32.onnx")
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            plain = os.path.join(tmp, "plain.onnx")
            out = os.path.join(tmp, "fp32.onnx")
            to_onnx(src, plain)
            n = fold(plain, out)
            diff = same_outputs(src, out)
            if n == 0 or diff > 1e-3:
                raise SystemExit(f"{name}: folded {n} nodes, relative output difference {diff:.2e}")
            os.replace(out, dst)
        print(f"moonshine-fp32: {dst} ({n} dequantisation nodes folded, "
              f"relative difference {diff:.1e})", file=sys.stderr)


if __name__ == "__main__":
    main()
