"""Text overlay: share of the frame covered by text and the text itself, by RapidOCR (PP-OCRv4
ONNX models shipped in the `rapidocr-onnxruntime` wheel, so it runs offline), on a few sampled
detail frames only: the first detail frame at or after every `text.every_s` seconds (2 s: every
clip of at least 2 s, the shortest the default filters keep, gets one).

Cost: detection runs on the detail frame shrunk to `det_width` (320 px: ~10 ms on one CPU
thread; RapidOCR's own preprocessing would enlarge a small frame to 736-960 px, 3-10x slower),
recognition only on the boxes found, cropped from the 480 px detail frame so small text is still
readable. At one sample per 2 s of 30 fps video that is ~0.2 ms per video frame without text.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np

from pipeline.signals.config import TextConfig
from pipeline.signals.series import DetailSchedule, SampleList


@functools.lru_cache(maxsize=None)
def load_ocr(threads: int = 1):
    """RapidOCR on one thread, without the 180-degree text classifier (overlays are upright).
    Loaded once per process (~0.5 s) and shared by every video's analyzer."""
    from rapidocr_onnxruntime import RapidOCR

    # det_limit_type="max": detect at the size we give (the default enlarges the short side to 736)
    return RapidOCR(det_limit_type="max", use_cls=False, intra_op_num_threads=threads, inter_op_num_threads=threads)


def read_text(ocr, bgr: np.ndarray, det_width: int, min_score: float) -> tuple[float, list[str]]:
    """(share of the image covered by read text boxes, texts read) for one BGR image."""
    h, w = bgr.shape[:2]
    scale = w / det_width if w > det_width else 1.0
    small = cv2.resize(bgr, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA) if scale > 1 else bgr
    boxes, _ = ocr(small, use_rec=False, use_cls=False)
    mask = np.zeros((h, w), np.uint8)
    texts = []
    for box in boxes or []:
        points = np.asarray(box, np.float32) * scale
        x, y, bw, bh = cv2.boundingRect(points)
        crop = bgr[max(y, 0): y + bh, max(x, 0): x + bw]
        if crop.size == 0:
            continue
        result, _ = ocr(crop, use_det=False, use_cls=False)
        if not result:
            continue
        text, score = result[0][0], float(result[0][1])
        if score < min_score or not text.strip():
            continue
        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
        texts.append(text.strip())
    return float(mask.mean()), texts


class TextAnalyzer:
    name = "text"

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.schedule = DetailSchedule(cfg.every_s)
        self.samples = SampleList()
        self._ocr = None  # loaded on the first sampled frame, so building analyzers stays cheap

    def update(self, frame) -> None:
        detail = getattr(frame, "detail", None)
        if detail is None or not self.schedule.due(frame.pts_s):
            return
        if self._ocr is None:
            self._ocr = load_ocr()
        self.samples.add(frame.index, read_text(self._ocr, detail, self.cfg.det_width, self.cfg.min_score))

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        samples = self.samples.window(start_frame, end_frame)
        if not samples:
            return {"text_area": None, "ocr_text": None}
        lines = list(dict.fromkeys(t for _, texts in samples for t in texts))
        return {"text_area": max(area for area, _ in samples),
                "ocr_text": " | ".join(lines)[: self.cfg.max_chars]}
