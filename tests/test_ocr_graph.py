"""The OCR models' graph rewrite: fewer operators, the same outputs (ONNX Runtime runs both)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

# installed with rapidocr (pyproject: Python < 3.13, where the OCR runs)
onnx = pytest.importorskip("onnx", reason="onnx comes with the OCR dependencies (Python < 3.13)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the OCR dependencies (Python < 3.13)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pipeline.ingest.signals import ocr_graph  # noqa: E402

RNG = np.random.default_rng(7)


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _hard_swish(x: str, tag: str) -> list:
    """x * clip(x + 3, 0, 6) / 6, the way the PaddlePaddle export writes it."""
    return [
        helper.make_node("Add", [x, "three"], [f"{tag}_a"]),
        helper.make_node("Clip", [f"{tag}_a", "zero", "six"], [f"{tag}_c"]),
        helper.make_node("Mul", [x, f"{tag}_c"], [f"{tag}_m"]),
        helper.make_node("Div", [f"{tag}_m", "six"], [f"{tag}_out"]),
    ]


def _conv(name: str, x: str, out: str, c_out: int, c_in: int, k: int, pad: int) -> tuple:
    w = _const(f"{name}_w", RNG.normal(0, 0.5, (c_out, c_in, k, k)))
    b = _const(f"{name}_b", RNG.normal(0, 0.5, c_out))
    node = helper.make_node("Conv", [x, w.name, b.name], [out], name=name, kernel_shape=[k, k], pads=[pad] * 4)
    return node, [w, b]


def backbone_like_model() -> onnx.ModelProto:
    """conv3x3 -> *s +b -> hard-swish -> *s +b -> conv1x1 -> *s +b -> conv3x3 (padded) -> out:
    the block pattern of PP-LCNetV3, plus an affine before a padded conv that must stay."""
    nodes, inits = [], [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    for name, value in (("s1", 1.7), ("b1", -0.4), ("s2", 0.8), ("b2", 0.3), ("s3", -1.2), ("b3", 0.6)):
        inits.append(_const(name, [value]))   # shape [1], as exported
    conv1, w1 = _conv("conv1", "x", "c1", 8, 3, 3, 1)
    conv2, w2 = _conv("conv2", "a2", "c2", 8, 8, 1, 0)
    conv3, w3 = _conv("conv3", "a3", "y", 4, 8, 3, 1)
    inits += w1 + w2 + w3
    nodes += [conv1, helper.make_node("Mul", ["s1", "c1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"])]
    nodes += _hard_swish("a1", "hs")
    nodes += [helper.make_node("Mul", ["hs_out", "s2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["a2"]), conv2]
    nodes += [helper.make_node("Mul", ["c2", "s3"], ["m3"]), helper.make_node("Add", ["b3", "m3"], ["m3b"])]
    nodes += _hard_swish("m3b", "hs2")
    nodes += [helper.make_node("Add", ["hs2_out", "b3"], ["a3"]), conv3]   # before a padded conv: stays
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 24])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_simplify_removes_the_elementwise_passes_and_computes_the_same():
    model = backbone_like_model()
    x = RNG.uniform(-2, 2, (1, 3, 16, 24)).astype(np.float32)
    before = run(model, x)
    removed = ocr_graph.simplify(model)
    ops = [n.op_type for n in model.graph.node]
    # two hard-swishes lose Add and Div each; s1/b1 and s3/b3 fold into the conv before them,
    # s2/b2 into the 1x1 conv after them; the Add before the padded conv3 stays
    assert removed == 4 + 6
    assert ops.count("HardSigmoid") == 2 and "Clip" not in ops and "Div" not in ops
    assert ops.count("Add") == 1 and ops.count("Mul") == 2   # the kept Add; one Mul per hard-swish
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(model, x), before, rtol=1e-5, atol=1e-5)


def test_an_affine_before_a_padded_conv_would_change_its_border_so_it_stays():
    """Why the rule exists: folding b into a padded conv's bias gives the border b's share too."""
    model = backbone_like_model()
    ocr_graph.simplify(model)
    kept = [n for n in model.graph.node if n.op_type == "Add"]
    assert [n.output[0] for n in kept] == ["a3"]


def test_simplified_model_is_cached_and_checked(tmp_path):
    source = tmp_path / "block.onnx"
    onnx.save(backbone_like_model(), str(source))
    made = ocr_graph.simplified_model(source, cache=tmp_path / "cache")
    assert made != source and made.parent == tmp_path / "cache"
    assert len(onnx.load(str(made)).graph.node) < len(onnx.load(str(source)).graph.node)
    stamp = made.stat().st_mtime_ns
    assert ocr_graph.simplified_model(source, cache=tmp_path / "cache") == made
    assert made.stat().st_mtime_ns == stamp           # reused, not made again
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_the_cache_is_keyed_by_the_model_bytes_and_drops_older_rewrites(tmp_path):
    """The same model installed in a second virtual environment reuses the copy (a key of the path
    made one more 15 MB pair per environment); a copy from an older rewrite is removed."""
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f"block-0123456789abcdef-r{ocr_graph.REWRITE_VERSION - 1}.onnx"
    stale.write_bytes(b"made by an older rewrite")
    first, second = tmp_path / "env1" / "block.onnx", tmp_path / "env2" / "block.onnx"
    for path in (first, second):
        path.parent.mkdir()
    onnx.save(backbone_like_model(), str(first))
    second.write_bytes(first.read_bytes())
    made = ocr_graph.simplified_model(first, cache=cache)
    assert ocr_graph.simplified_model(second, cache=cache) == made
    assert sorted(cache.iterdir()) == [made]
    onnx.save(backbone_like_model(), str(second))   # other weights: another version, its own copy
    other = ocr_graph.simplified_model(second, cache=cache)
    assert other not in (made, second) and sorted(cache.iterdir()) == sorted([made, other])


def test_a_rewrite_that_changes_the_outputs_is_not_used(tmp_path, monkeypatch, capsys):
    source = tmp_path / "block.onnx"
    onnx.save(backbone_like_model(), str(source))
    real = ocr_graph.simplify

    def wrong(model):   # a rewrite with a bug: one folded weight off by a lot
        removed = real(model)
        for t in model.graph.initializer:
            if t.name.endswith("folded_w"):
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
                break
        return removed

    monkeypatch.setattr(ocr_graph, "simplify", wrong)
    assert ocr_graph.simplified_model(source, cache=tmp_path / "cache") == source
    assert "using it as shipped" in capsys.readouterr().err
    assert not list((tmp_path / "cache").iterdir())


def test_the_shipped_ocr_models_read_the_same_after_the_rewrite(tmp_path):
    """The real PP-OCRv4 detector and recogniser, as shipped and rewritten, on a rendered title:
    the same boxes and the same text, and fewer operators."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    from pipeline.ingest.signals.text import read_text

    paths = update_model_path(read_yaml(DEFAULT_CFG_PATH))
    det, rec = paths["Det"]["model_path"], paths["Rec"]["model_path"]
    fast = {k: ocr_graph.simplified_model(p, cache=tmp_path) for k, p in (("det", det), ("rec", rec))}
    for original, rewritten in ((det, fast["det"]), (rec, fast["rec"])):
        assert rewritten != original
        before, after = ([n.op_type for n in onnx.load(str(p)).graph.node if n.op_type != "Constant"]
                         for p in (original, rewritten))
        assert before.count("Clip") >= 24 and "Clip" not in after          # every hard-swish
        assert len(after) <= len(before) - 100                              # and the scalar affines
    engines = [rapidocr.RapidOCR(det_limit_type="max", use_cls=False, **kw)
               for kw in ({}, {"det_model_path": str(fast["det"]), "rec_model_path": str(fast["rec"])})]
    picture = cv2.GaussianBlur(RNG.integers(0, 255, (270, 480, 3), dtype=np.uint8), (0, 0), 4)
    cv2.putText(picture, "Curated 2026", (40, 150), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (255, 255, 255), 4)
    cv2.putText(picture, "one tool", (60, 230), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (240, 240, 40), 2)
    (shipped, shipped_boxes), (rewritten, rewritten_boxes) = (read_text(e, picture, 320, 0.5) for e in engines)
    assert "CURATED" in "".join(shipped[1]).upper()
    assert rewritten == shipped and [b.rect for b in rewritten_boxes] == [b.rect for b in shipped_boxes]


def test_a_damaged_cached_model_falls_back_to_the_shipped_one(tmp_path, monkeypatch, capsys):
    pytest.importorskip("rapidocr_onnxruntime")
    from pipeline.ingest.signals import text

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text.load_ocr.cache_clear()
    try:
        text.load_ocr()                                           # makes the rewritten models
        (det,) = (tmp_path / "recap" / "ocr").glob("*det*.onnx")
        det.write_bytes(det.read_bytes()[:1000])                  # a disk error cut it short
        text.load_ocr.cache_clear()
        ocr = text.load_ocr()
        assert "using the shipped ones" in capsys.readouterr().err
        picture = np.full((180, 320, 3), 30, np.uint8)
        cv2.putText(picture, "FALLBACK", (20, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.8, (255, 255, 255), 4)
        (_, texts), _ = text.read_text(ocr, picture, 320, 0.5)
        assert "FALLBACK" in "".join(texts).upper()
    finally:
        text.load_ocr.cache_clear()                               # other tests get the default cache
