"""Cheaper ONNX graphs for the OCR models: the same arithmetic in fewer operators.

PP-OCRv4's detector and recogniser (PP-LCNetV3 backbones) come exported with every hard-swish
spelled out as four operators (x * clip(x + 3, 0, 6) / 6) and a learnable scalar affine
(y = s * x + b) after most convolutions and activations, each its own pass over a feature map.
ONNX Runtime's CPU optimiser fuses neither (its Conv+Mul fusion wants a per-channel constant), so
a detector run at 320x192 spends about a third of its time in these element-wise passes.
`simplify` rewrites them:

- hard-swish: HardSigmoid(x; 1/6, 1/2) * x, two operators instead of four (the same function);
- a scalar Mul or Add right after a convolution (its only consumer): folded into that
  convolution's weights and bias (s * (W x + B) + b = (s W) x + (s B + b));
- a scalar Mul or Add right before a 1x1 convolution without padding (its only consumer):
  folded into it (W (s x + b) + B = (s W) x + (B + b * sum W)). Not before a padded one: its zero
  border would then stand for b instead of 0, so those stay.

Outputs match the original to float rounding (max |difference| ~1e-6 on the detector's
probability map). `simplified_model` makes the rewritten file once per model file, checks it
against the original on a probe input, and caches it; anything unexpected keeps the original.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# Bump when `simplify` or the cache's naming changes, so cached files made by an older rewrite are
# not reused (and are removed: `_remove_older_rewrites`).
REWRITE_VERSION = 2
# Largest |difference| between the original and the rewritten model's outputs on the probe input
# that still counts as the same arithmetic (float rounding of the folded weights is ~1e-6).
PROBE_TOLERANCE = 1e-3


def cache_dir() -> Path:
    """Where rewritten models are kept: $XDG_CACHE_HOME/recap/ocr (~/.cache/recap/ocr)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recap" / "ocr"


def simplify(model) -> int:
    """Rewrite `model` (an onnx.ModelProto) in place as described above; returns how many
    operators it removed."""
    graph = model.graph
    values = _constant_values(graph)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in values)]
    before = len(nodes)
    nodes = _hard_sigmoid_swish(nodes, values)
    while _fold_one_scalar(nodes, values, {o.name for o in graph.output}):
        pass
    del graph.node[:]
    graph.node.extend(nodes)
    _keep_used_initializers(graph, values, nodes)
    return before - len(nodes)


def _constant_values(graph) -> dict[str, np.ndarray]:
    """Every initializer and every tensor-valued Constant node's output, as arrays."""
    # lazy: onnx is needed only while a cached rewrite is made
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _scalar(values: dict[str, np.ndarray], name: str) -> float | None:
    value = values.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _consumers(nodes) -> dict[str, list]:
    found: dict[str, list] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            found[name].append(node)
    return found


def _hard_sigmoid_swish(nodes: list, values: dict[str, np.ndarray]) -> list:
    """Add(x, 3) -> Clip(0, 6) -> Mul(x) -> Div(6) becomes HardSigmoid(x; 1/6, 1/2) -> Mul(x)."""
    # lazy: onnx is needed only while a cached rewrite is made
    from onnx import helper

    producer = {out: n for n in nodes for out in n.output}
    consumers = _consumers(nodes)
    dropped: set[int] = set()
    for clip in nodes:
        if clip.op_type != "Clip" or len(clip.input) != 3 or len(consumers[clip.output[0]]) != 1:
            continue
        add = producer.get(clip.input[0])
        mul = consumers[clip.output[0]][0]
        if add is None or add.op_type != "Add" or mul.op_type != "Mul" or len(consumers[add.output[0]]) != 1:
            continue
        x = add.input[0] if _scalar(values, add.input[1]) == 3.0 else None
        divs = consumers[mul.output[0]]
        if (x is None or _scalar(values, clip.input[1]) != 0.0 or _scalar(values, clip.input[2]) != 6.0
                or sorted(mul.input) != sorted([x, clip.output[0]]) or len(divs) != 1
                or divs[0].op_type != "Div" or divs[0].input[0] != mul.output[0]
                or _scalar(values, divs[0].input[1]) != 6.0):
            continue
        clip.CopyFrom(helper.make_node("HardSigmoid", [x], [clip.output[0]], name=clip.name,
                                       alpha=1.0 / 6.0, beta=0.5))
        mul.output[0] = divs[0].output[0]
        dropped.update((id(add), id(divs[0])))
    return [n for n in nodes if id(n) not in dropped]


def _conv_weights(conv, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    if conv.input[1] not in values:
        return None
    weight = values[conv.input[1]].astype(np.float32)
    bias = values[conv.input[2]].astype(np.float32) if len(conv.input) > 2 else np.zeros(weight.shape[0], np.float32)
    return weight, bias


def _set_conv_weights(conv, data: str, weight: np.ndarray, bias: np.ndarray, values: dict[str, np.ndarray]) -> None:
    w_name, b_name = f"{conv.name or conv.output[0]}/folded_w", f"{conv.name or conv.output[0]}/folded_b"
    values[w_name], values[b_name] = weight, bias
    del conv.input[:]
    conv.input.extend([data, w_name, b_name])


def _unpadded_pointwise(conv, weight: np.ndarray) -> bool:
    attrs = {a.name: a for a in conv.attribute}
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    return weight.shape[2:] == (1, 1) and not any(pads) and auto_pad in ("NOTSET", "VALID")


def _fold_one_scalar(nodes: list, values: dict[str, np.ndarray], graph_outputs: set[str]) -> bool:
    """Fold one scalar Mul/Add into the convolution before or after it (see the module's
    docstring); False when none is left."""
    producer = {out: n for n in nodes for out in n.output}
    consumers = _consumers(nodes)
    for node in nodes:
        if node.op_type not in ("Mul", "Add") or len(node.input) != 2:
            continue
        data, const = node.input
        if _scalar(values, data) is not None and const not in values:
            data, const = const, data
        s = _scalar(values, const)
        if s is None or data in values:
            continue
        conv = producer.get(data)
        if (conv is not None and conv.op_type == "Conv" and len(consumers[data]) == 1 and data not in graph_outputs
                and (wb := _conv_weights(conv, values)) is not None):
            weight, bias = wb
            weight, bias = (weight * s, bias * s) if node.op_type == "Mul" else (weight, bias + s)
            _set_conv_weights(conv, conv.input[0], weight, bias, values)
            conv.output[0] = node.output[0]
            nodes.remove(node)
            return True
        after = consumers[node.output[0]]
        if len(after) != 1 or after[0].op_type != "Conv" or node.output[0] in graph_outputs:
            continue
        conv = after[0]
        wb = _conv_weights(conv, values)
        if conv.input[0] != node.output[0] or wb is None or not _unpadded_pointwise(conv, wb[0]):
            continue
        weight, bias = wb
        weight, bias = (weight * s, bias) if node.op_type == "Mul" else (weight, bias + s * weight.sum(axis=(1, 2, 3)))
        _set_conv_weights(conv, data, weight, bias, values)
        nodes.remove(node)
        return True
    return False


def _keep_used_initializers(graph, values: dict[str, np.ndarray], nodes: list) -> None:
    # lazy: onnx is needed only while a cached rewrite is made
    from onnx import numpy_helper

    used = {name for n in nodes for name in n.input}
    graph_inputs = {i.name for i in graph.input}
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items()
                             if name in used and name not in graph_inputs)


def _probe_input(session) -> dict[str, np.ndarray]:
    """A fixed pseudo-random input for each of the session's inputs: a batch of one, other free
    sizes 64 (a multiple of the detector's 32)."""
    rng = np.random.default_rng(0)
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (1 if k == 0 else 64) for k, d in enumerate(i.shape)]
        feed[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    return feed


def same_outputs(original: str | Path, rewritten: str | Path) -> bool:
    """The two models compute the same outputs on a probe input, within PROBE_TOLERANCE."""
    # lazy: ONNX Runtime loads only where OCR runs
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    a = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(rewritten), options, providers=["CPUExecutionProvider"])
    feed = _probe_input(a)
    return all(x.shape == y.shape and float(np.abs(x - y).max(initial=0.0)) <= PROBE_TOLERANCE
               for x, y in zip(a.run(None, feed), b.run(None, feed)))


def simplified_model(path: str | Path, cache: Path | None = None) -> Path:
    """The `simplify`-rewritten copy of the ONNX model at `path`: made once (~0.3 s), checked
    against the original with `same_outputs`, kept in `cache` (default `cache_dir()`) under a
    digest of the model's bytes (~4-9 ms to read: every environment holding the same model shares
    one copy, where a key of its path made one more per new virtual environment). Returns `path`
    itself, after a warning, when the rewrite cannot be made, stored or trusted: the original
    computes the same, only slower."""
    path = Path(path)
    cache = cache or cache_dir()
    partial = None
    try:
        with path.open("rb") as f:
            key = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=8)).hexdigest()
        target = cache / f"{path.stem}-{key}-r{REWRITE_VERSION}.onnx"
        if target.is_file():
            return target
        # lazy: onnx is needed only while a cached rewrite is made
        import onnx

        model = onnx.load(str(path))
        simplify(model)
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        onnx.save(model, str(partial))
        if not same_outputs(path, partial):
            raise ValueError("the rewritten model's outputs differ from the original's")
        os.replace(partial, target)   # atomic: a process beside this one reads a whole file or none
        _remove_older_rewrites(cache, path.stem)
        return target
    except Exception as err:  # noqa: BLE001 - any failure leaves the original model, which is correct
        if partial is not None:
            partial.unlink(missing_ok=True)
        print(f"warning: OCR model {path.name}: using it as shipped ({type(err).__name__}: {err})", file=sys.stderr)
        return path


def _remove_older_rewrites(cache: Path, stem: str) -> None:
    """Delete the copies of `stem` that an older REWRITE_VERSION made: this code never reads them
    again. Copies of this version for other bytes of the model (another package version) stay."""
    for old in cache.glob(f"{stem}-*-r*.onnx"):
        if not old.name.endswith(f"-r{REWRITE_VERSION}.onnx"):
            old.unlink(missing_ok=True)
