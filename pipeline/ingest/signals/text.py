"""Text overlay: share of the frame covered by text and the text itself, by RapidOCR (PP-OCRv4
ONNX models shipped in the `rapidocr-onnxruntime` wheel, so it runs offline), on sampled detail
frames only.

Which detail frames are read (they arrive every `signals.detail_every_s`, 1 s): the first at or
after every multiple of `text.every_s` (2 s; on a source smaller than `signals.full_rate_pixels`
up to `signals.max_stretch` times that, e.g. 4.5 s at 720p and 8 s at 360p, whose decode costs
that much less) always; each one in between only when no regular reading shares its *run*, the
frames between two picture breaks (a cut, seen as a lag-1 structure jump, or a blank frame).
Otherwise it takes the reading of its run, which shows the same picture.
So a 1-2 s shot between two cuts is still read, every clip of at least `detail_every_s` has a
reading, and a video whose shots are longer than `every_s` costs half the readings of reading
every detail frame. A regular reading whose frame is still the picture the run last read (no
8x8 block of its grey levels moved by more than `SAME_PICTURE`: a still shot, a slide, a paused
title) takes that reading too: text that appears, changes or goes changes its blocks far more.
The frames in between are held until the next regular reading decides (at most
every_s / detail_every_s - 1 of them: memory stays bounded).

Cost: detection runs on the detail frame shrunk to `det_width` (320 px: ~7 ms on one CPU thread;
RapidOCR's own preprocessing would enlarge a small frame to 736-960 px, 3-10x slower);
recognition (~8-9 ms a box) only on the boxes found, cropped from the 480 px detail frame so
small text is still readable, and only on those the previous reading did not already read: a box
where one was, over pixels that look as they did, keeps its text (`read_text`).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np

from pipeline.ingest.analysis import MIN_THUMB_STD
from pipeline.ingest.signals import ocr_graph
from pipeline.ingest.signals.config import TextConfig
from pipeline.ingest.signals.series import DetailSchedule, SampleList


@functools.lru_cache(maxsize=None)
def load_ocr(threads: int = 1):
    """RapidOCR on one thread, without the 180-degree text classifier (overlays are upright), its
    detector and recogniser rewritten into fewer operators (`ocr_graph`: same outputs, ~20% and
    ~25% less CPU). Loaded once per process (~0.5 s) and shared by every video's analyzer."""
    # lazy: the OCR models load only when text signals are enabled
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    config = update_model_path(read_yaml(DEFAULT_CFG_PATH))
    shipped = {"det_model_path": config["Det"]["model_path"], "rec_model_path": config["Rec"]["model_path"]}
    rewritten = {key: str(ocr_graph.simplified_model(path)) for key, path in shipped.items()}
    # det_limit_type="max": detect at the size we give (the default enlarges the short side to 736)
    common = dict(det_limit_type="max", use_cls=False, intra_op_num_threads=threads, inter_op_num_threads=threads)
    try:
        return RapidOCR(**common, **rewritten)
    except Exception as err:  # noqa: BLE001 - a damaged cached file: the shipped models read the same
        print(f"warning: the rewritten OCR models in {ocr_graph.cache_dir()} do not load ({err}); "
              "using the shipped ones (delete that folder to have them made again)", file=sys.stderr)
        return RapidOCR(**common, **shipped)


Reading = tuple[float, list[str]]  # (text area share, texts read)


class ReadBox(NamedTuple):
    """One detected text box of a reading, kept so the next reading can know it again."""
    rect: tuple[int, int, int, int]   # (x, y, w, h) bounding rectangle in detail-frame pixels
    look: np.ndarray                  # block_means of its grey pixels: the same text looks the same
    text: str                         # what recognition read there; "" when nothing passed min_score


# A detection of the same text jitters by a pixel or two between frames (at the 480 px detail width).
BOX_JITTER = 2
BOX_BLOCK = 4      # box looks are compared in 4x4 blocks: one changed glyph moves several by 25+ levels


def read_text(ocr, bgr: np.ndarray, det_width: int, min_score: float,
              known: Sequence[ReadBox] = ()) -> tuple[Reading, list[ReadBox]]:
    """((share of the image covered by read text boxes, texts read), the boxes) for one BGR image.

    Detection runs on every call; recognition (~10 ms a box, more than detection on a frame with
    two lines of text) only on boxes that are new: a box where one of `known` (the previous
    reading's boxes) was, within BOX_JITTER px, over pixels that still look as they did then (no
    BOX_BLOCK block's mean moved by more than SAME_PICTURE grey levels) shows the same text, and
    keeps what was read there. So a watermark, a logo or a subtitle that stays is read once while
    the picture around it moves."""
    h, w = bgr.shape[:2]
    scale = w / det_width if w > det_width else 1.0
    small = cv2.resize(bgr, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA) if scale > 1 else bgr
    boxes, _ = ocr(small, use_rec=False, use_cls=False)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if boxes else None
    mask = np.zeros((h, w), np.uint8)
    texts, found = [], []
    for box in boxes or []:
        points = np.asarray(box, np.float32) * scale
        x, y, bw, bh = cv2.boundingRect(points)
        x, y = max(x, 0), max(y, 0)
        crop = bgr[y: y + bh, x: x + bw]
        if crop.size == 0:
            continue
        rect = (x, y, crop.shape[1], crop.shape[0])
        text = _known_text(known, rect, grey)
        if text is None:
            result, _ = ocr(crop, use_det=False, use_cls=False)
            ok = result and float(result[0][1]) >= min_score
            text = result[0][0].strip() if ok else ""
        found.append(ReadBox(rect, block_means(grey[y: y + rect[3], x: x + rect[2]], BOX_BLOCK), text))
        if text:
            cv2.fillPoly(mask, [points.astype(np.int32)], 1)
            texts.append(text)
    return (float(mask.mean()), texts), found


def _known_text(known: Sequence[ReadBox], rect: tuple[int, int, int, int], grey: np.ndarray) -> str | None:
    """The text of a known box at `rect` (within BOX_JITTER) whose pixels in `grey` still look the
    same (compared where that box was, so pixel for pixel), or None: read it."""
    for box in known:
        if max(abs(a - b) for a, b in zip(box.rect, rect)) > BOX_JITTER:
            continue
        x, y, bw, bh = box.rect
        if same_picture(block_means(grey[y: y + bh, x: x + bw], BOX_BLOCK), box.look):
            return box.text
    return None


# Largest change of an 8x8 block's mean grey level (0-255) between two detail frames that still
# counts as the same picture: compression noise on a still shot moves block means by 1-3 levels,
# while a subtitle's strokes cover a fifth or more of the blocks they cross at contrast 100+.
SAME_PICTURE = 6.0
BLOCK = 8


def same_picture(blocks: np.ndarray, other: np.ndarray) -> bool:
    """Two frames' picture_blocks show the same picture, within compression noise."""
    return blocks.shape == other.shape and int(np.abs(blocks - other).max()) <= SAME_PICTURE


def picture_blocks(detail: np.ndarray) -> np.ndarray:
    """Mean grey level of every BLOCK x BLOCK block of a BGR detail frame (int16, to subtract)."""
    return block_means(cv2.cvtColor(detail, cv2.COLOR_BGR2GRAY), BLOCK)


def block_means(grey: np.ndarray, block: int) -> np.ndarray:
    """Mean of every whole `block` x `block` block of a grey image (int16, to subtract); a side
    shorter than a block counts as one."""
    h, w = grey.shape
    bh, bw = max(1, h // block), max(1, w // block)
    whole = grey[: bh * block, : bw * block] if h >= block and w >= block else grey
    return cv2.resize(whole, (bw, bh), interpolation=cv2.INTER_AREA).astype(np.int16)


# A lag-1 structure distance above this is a picture break (a cut; motion stays far below, see
# pipeline/ingest/shots.py: cuts measure 0.7-1.2 on the benchmark and sample videos).
BREAK_STRUCTURE = 0.3


class _Latest(NamedTuple):
    run: int              # the run (frames between picture breaks) of the frame read
    reading: Reading
    blocks: np.ndarray    # its picture_blocks, to tell whether a later frame still shows it
    boxes: list[ReadBox]  # its text boxes, so the next reading recognises only what is new


class TextAnalyzer:
    name = "text"

    def __init__(self, cfg: TextConfig, every_s: float | None = None):
        self.cfg = cfg
        # regular readings this often: `cfg.every_s`, or farther apart on a small source (make_analyzers)
        self.schedule = DetailSchedule(every_s or cfg.every_s)
        self.samples = SampleList()
        self._ocr = None  # loaded on the first reading, so building analyzers stays cheap
        self._run = 0  # picture breaks seen so far
        self._prev_z: np.ndarray | None = None
        self._last: _Latest | None = None  # the latest frame actually read
        self._held: list[tuple[int, int, np.ndarray]] = []  # (frame index, run, detail frame)

    def update(self, frame) -> None:
        z, std = frame.structure  # shared with shot detection, which computed it first
        if std < MIN_THUMB_STD or (self._prev_z is not None and 1.0 - float(z @ self._prev_z) / z.size > BREAK_STRUCTURE):
            self._run += 1
        self._prev_z = None if std < MIN_THUMB_STD else z
        detail = getattr(frame, "detail", None)
        if detail is None:
            return
        if not self.schedule.due(frame.pts_s):
            self._held.append((frame.index, self._run, detail))
            return
        latest, blocks = self._last, picture_blocks(detail)
        if latest is None or latest.run != self._run or not same_picture(blocks, latest.blocks):
            latest = self._read(self._run, detail, blocks)
        # else a still picture: what was read is still what it shows
        self._resolve_held(next_reading=(self._run, latest.reading))
        self.samples.add(frame.index, latest.reading)
        self._last = latest

    def _read(self, run: int, detail: np.ndarray, blocks: np.ndarray | None = None) -> _Latest:
        if self._ocr is None:
            self._ocr = load_ocr()
        known = self._last.boxes if self._last is not None else []
        reading, boxes = read_text(self._ocr, detail, self.cfg.det_width, self.cfg.min_score, known)
        return _Latest(run, reading, picture_blocks(detail) if blocks is None else blocks, boxes)

    def _resolve_held(self, next_reading: tuple[int, Reading] | None) -> None:
        """Give every held frame the reading of its run, reading it only when it has none."""
        for index, run, detail in self._held:
            if self._last is not None and self._last.run == run:
                reading = self._last.reading
            elif next_reading is not None and next_reading[0] == run:
                reading = next_reading[1]
            else:
                self._last = self._read(run, detail)
                reading = self._last.reading
            self.samples.add(index, reading)
        self._held.clear()

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        if self._held:  # the video ended: frames after the last regular reading
            self._resolve_held(next_reading=None)
        samples = self.samples.window(start_frame, end_frame)
        if not samples:
            return {"text_area": None, "ocr_text": None}
        lines = list(dict.fromkeys(t for _, texts in samples for t in texts))
        return {"text_area": max(area for area, _ in samples),
                "ocr_text": " | ".join(lines)[: self.cfg.max_chars]}
