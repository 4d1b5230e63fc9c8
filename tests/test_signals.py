"""Each clip signal on synthetic clips with known properties, fed to the analyzers frame by frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.ingest.analysis import AnalysisFrame
from pipeline.ingest.signals.analyzers import clip_signals, make_analyzers
from pipeline.ingest.signals.config import SignalsConfig, TextConfig, ocr_available
from pipeline.ingest.signals.series import DetailSchedule
from pipeline.ingest.signals.text import read_text as READ_TEXT

# the OCR engine has no wheels for Python 3.13+ (pyproject), where ingest leaves text signals null
needs_ocr = pytest.mark.skipif(not ocr_available(), reason="rapidocr-onnxruntime is not installed (no wheels "
                               "for Python 3.13+): text reading cannot be tested here")

FPS = 30.0
SOURCE = (640, 360)          # the "coded" size of the synthetic source video
ANALYSIS_W, DETAIL_W = 160, 480


def texture(h: int = 900, w: int = 1600, seed: int = 0) -> np.ndarray:
    """A colourful random canvas with structure at several scales (flow needs texture)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for sigma, weight in ((24, 1.0), (6, 0.6), (1.5, 0.3)):
        noise = rng.standard_normal((h, w, 3)).astype(np.float32)
        img += weight * cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


def make_frame(index: int, source_bgr: np.ndarray, schedule: DetailSchedule | None = None) -> AnalysisFrame:
    """What the decoder hands over: a 160 px frame, plus a 480 px detail frame when one is due."""
    h, w = source_bgr.shape[:2]
    small = cv2.resize(source_bgr, (ANALYSIS_W, round(h * ANALYSIS_W / w)), interpolation=cv2.INTER_AREA)
    pts = index / FPS
    detail = None
    if schedule is not None and schedule.due(pts):
        detail = cv2.resize(source_bgr, (DETAIL_W, round(h * DETAIL_W / w)), interpolation=cv2.INTER_AREA)
    kwargs = dict(index=index, pts_s=pts, bgr=small, luma=cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    if "detail" in AnalysisFrame.__dataclass_fields__:
        return AnalysisFrame(**kwargs, detail=detail)
    frame = AnalysisFrame(**kwargs)
    object.__setattr__(frame, "detail", detail)  # until AnalysisFrame declares the detail field
    return frame


def crop(canvas: np.ndarray, cx: float, cy: float, scale: float = 1.0) -> np.ndarray:
    """The SOURCE-sized view of `canvas` centred at (cx, cy), showing SOURCE * scale canvas pixels."""
    w, h = SOURCE
    m = np.float32([[scale, 0, cx - scale * w / 2], [0, scale, cy - scale * h / 2]])
    return cv2.warpAffine(canvas, m, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)


def analyse(frames: list[np.ndarray], cfg: SignalsConfig | None = None, ranges=None) -> list[dict]:
    cfg = cfg or SignalsConfig()
    analyzers = make_analyzers(cfg, SOURCE)
    schedule = DetailSchedule(cfg.detail_every_s)
    for i, f in enumerate(frames):
        frame = make_frame(i, f, schedule)
        for a in analyzers:
            a.update(frame)
    ranges = ranges or [(0, len(frames))]
    return [clip_signals(analyzers, s, e) for s, e in ranges]


NO_TEXT = SignalsConfig()
NO_TEXT.text.enabled = False  # OCR is tested on its own; the motion tests need not pay for it


def camera_clip(kind: str, n: int = 45) -> list[np.ndarray]:
    canvas = texture()
    cx, cy = 800.0, 450.0
    frames = []
    for t in range(n):
        if kind == "pan_left":      # the camera turns left: the window slides left over the scene
            frames.append(crop(canvas, cx - 4 * t, cy))
        elif kind == "pan_right":
            frames.append(crop(canvas, cx + 4 * t, cy))
        elif kind == "tilt_up":
            frames.append(crop(canvas, cx, cy - 3 * t))
        elif kind == "tilt_down":
            frames.append(crop(canvas, cx, cy + 3 * t))
        elif kind == "zoom_in":     # the window shrinks: the scene grows
            frames.append(crop(canvas, cx, cy, 0.99**t))
        elif kind == "zoom_out":
            frames.append(crop(canvas, cx, cy, 0.99 ** (n - t)))
        elif kind == "static":
            frames.append(crop(canvas, cx, cy))
        elif kind == "shaky":
            rng = np.random.default_rng(t)
            frames.append(crop(canvas, cx + rng.normal(0, 6), cy + rng.normal(0, 6)))
    return frames


@pytest.mark.parametrize("kind", ["pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky"])
def test_camera_motion_class(kind):
    (row,) = analyse(camera_clip(kind), NO_TEXT)
    assert row["camera_motion"] == kind, row
    assert row["motion_score"] > 2.0


def test_frozen_clip_is_static_and_frozen():
    (row,) = analyse(camera_clip("static"), NO_TEXT)
    assert row["camera_motion"] == "static"
    assert row["motion_score"] < 0.5
    assert row["frozen_share"] == 1.0
    (moving,) = analyse(camera_clip("pan_left"), NO_TEXT)
    assert moving["frozen_share"] == 0.0


def test_duplicated_frames_are_not_frozen_but_a_freeze_is():
    moving = camera_clip("pan_left", n=40)
    doubled = [f for f in moving[:20] for _ in range(2)]       # every frame twice (low-fps source)
    half_frozen = moving[:20] + [moving[19]] * 20              # motion, then a 20-frame freeze
    (d,), (h,) = analyse(doubled, NO_TEXT), analyse(half_frozen, NO_TEXT)
    assert d["frozen_share"] == 0.0
    assert 0.45 < h["frozen_share"] < 0.55


def test_moving_object_on_still_camera_is_static_with_motion():
    canvas = texture(seed=1)
    background = crop(canvas, 800, 450)
    frames = []
    for t in range(45):
        f = background.copy()
        cv2.circle(f, (100 + 8 * t, 180), 40, (255, 255, 255), -1)
        frames.append(f)
    (row,) = analyse(frames, NO_TEXT)
    assert row["camera_motion"] == "static"
    assert row["motion_score"] > 0.3  # the ball moves, so there is some motion
    assert row["frozen_share"] == 0.0


def test_ranges_are_measured_separately():
    frames = camera_clip("pan_left") + camera_clip("static")
    pan, still = analyse(frames, NO_TEXT, ranges=[(0, 45), (45, 90)])
    assert (pan["camera_motion"], still["camera_motion"]) == ("pan_left", "static")


def test_blurred_copy_is_less_sharp():
    frames = camera_clip("static", n=31)
    blurred = [cv2.GaussianBlur(f, (0, 0), 2.0) for f in frames]
    (sharp,), (soft,) = analyse(frames, NO_TEXT), analyse(blurred, NO_TEXT)
    assert soft["sharpness"] < 0.5 * sharp["sharpness"]


def test_exposure_black_and_colour():
    black = [np.full((360, 640, 3), 5, np.uint8)] * 20
    grey = [np.full((360, 640, 3), 128, np.uint8)] * 20
    frames = camera_clip("static", n=20)
    b, g, c = (analyse(x, NO_TEXT)[0] for x in (black, grey, frames))
    assert b["black_share"] == 1.0 and b["blank_share"] == 1.0 and b["brightness"] < 10
    assert g["black_share"] == 0.0 and g["blank_share"] == 1.0 and g["colorfulness"] < 1
    assert c["blank_share"] == 0.0 and c["colorfulness"] > 10 and c["contrast"] > 10
    assert b["phash"] == [] and len(c["phash"]) == 3


@pytest.mark.parametrize("bars, expected", [
    ((45, 45, 0, 0), ("letterbox", 0, 45, 640, 270)),
    ((0, 0, 80, 80), ("pillarbox", 80, 0, 480, 360)),
    ((0, 0, 0, 0), ("none", 0, 0, 640, 360)),
    ((60, 0, 0, 0), ("none", 0, 0, 640, 360)),  # dark on one side only is picture, not a bar
])
def test_bars_and_crop(bars, expected):
    top, bottom, left, right = bars
    frames = []
    for f in camera_clip("pan_left", n=40):
        f = f.copy()
        f[:top], f[360 - bottom:], f[:, :left], f[:, 640 - right:] = 0, 0, 0, 0
        frames.append(f)
    (row,) = analyse(frames, NO_TEXT)
    kind, x, y, w, h = expected
    assert row["bars"] == kind
    # one detail pixel is 640 / 480 = 1.33 source px; the crop goes up to 2 of them + even rounding inward
    assert abs(row["crop_x"] - x) <= 5 and abs(row["crop_y"] - y) <= 5
    assert abs(row["crop_w"] - w) <= 10 and abs(row["crop_h"] - h) <= 10
    assert row["crop_x"] >= x and row["crop_y"] >= y  # never keeps a bar row
    assert row["crop_x"] + row["crop_w"] <= x + w and row["crop_y"] + row["crop_h"] <= y + h


@needs_ocr
def test_text_overlay_is_found_and_read():
    frames = []
    for f in camera_clip("static", n=31):
        f = cv2.GaussianBlur(f, (0, 0), 3)  # a calm background, like a real title card
        cv2.putText(f, "RECAP 2024", (60, 300), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 5)
        frames.append(f)
    (row,) = analyse(frames)
    assert "RECAP" in row["ocr_text"].replace(" ", "").upper()
    assert 0.02 < row["text_area"] < 0.3
    (plain,) = analyse([cv2.GaussianBlur(f, (0, 0), 3) for f in camera_clip("static", n=31)])
    assert plain["ocr_text"] == "" and plain["text_area"] == 0.0


@needs_ocr
@pytest.mark.parametrize("stretch, expected_reads", [(False, 4), (True, 3)])
def test_text_reads_short_shots_but_not_every_detail_frame(monkeypatch, stretch, expected_reads):
    """Regular readings every 2 s; a 1.2 s shot between two cuts holding only an odd-second
    detail frame is read too, while detail frames inside longer shots take their shot's reading.
    With `text.stretch` on this 360p source regular readings are 4x farther apart (8 s): each
    shot is read once. The first shot pans (a still one would keep its first reading: see below)."""
    from pipeline.ingest.signals import text

    reads = []
    monkeypatch.setattr(text, "read_text", lambda *a: reads.append(1) or READ_TEXT(*a))
    shots = [(75, 0, None), (36, 1, "SHORT SHOT"), (69, 2, None)]  # (frames, canvas seed, title)
    frames = []
    for n, seed, title in shots:
        canvas = cv2.GaussianBlur(texture(seed=seed), (0, 0), 3)
        for i in range(n):
            picture = crop(canvas, 500 + (2 * i if seed == 0 else 0), 450)
            if title:
                cv2.putText(picture, title, (40, 300), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 5)
            frames.append(picture)
    cfg = SignalsConfig(text=TextConfig(stretch=stretch))
    assert (cfg.detail_every_s, cfg.text.every_s) == (1.0, 2.0)
    a, b, c = analyse(frames, cfg, ranges=[(0, 75), (75, 111), (111, 180)])
    assert "SHORT" in b["ocr_text"].replace(" ", "").upper() and b["text_area"] > 0.02
    assert a["ocr_text"] == c["ocr_text"] == "" and a["text_area"] == c["text_area"] == 0.0
    # detail frames at 0..5 s: at full rate read at 0, 2, 4 s (regular) and 3 s (the short shot),
    # 1 s and 5 s inherit; stretched, at 0 s (regular), 3 s and 4 s (shots without a reading)
    assert len(reads) == expected_reads


@needs_ocr
def test_a_still_picture_keeps_its_reading_until_its_text_changes(monkeypatch):
    """One still shot (no cut) whose subtitle changes at 3 s and goes at 6 s: regular readings at
    0, 2, 4, 6, 8 s; the 2 s and 8 s frames still show what the reading before them read (only
    compression-like noise differs), so only 0, 4 and 6 s are read, and every subtitle is found."""
    from pipeline.ingest.signals import text

    reads = []
    monkeypatch.setattr(text, "read_text", lambda *a: reads.append(1) or READ_TEXT(*a))
    rng = np.random.default_rng(0)
    still = cv2.GaussianBlur(cv2.resize(texture(seed=3), SOURCE), (0, 0), 3)
    frames = []
    for i in range(int(9 * FPS)):
        picture = still.copy()
        subtitle = "HELLO WORLD" if i < 3 * FPS else "GOOD NIGHT" if i < 6 * FPS else None
        if subtitle:
            cv2.putText(picture, subtitle, (60, 320), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 4)
        noise = rng.integers(-2, 3, picture.shape, dtype=np.int16)    # like a re-encoded still
        frames.append(np.clip(picture.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    (row,) = analyse(frames, SignalsConfig(text=TextConfig(stretch=False)))
    assert len(reads) == 3
    found = row["ocr_text"].replace(" ", "").upper()
    assert "HELLOWORLD" in found and "GOODNIGHT" in found
    parts = analyse(frames, SignalsConfig(text=TextConfig(stretch=False)), ranges=[(0, 90), (90, 180), (180, 270)])
    assert "HELLO" in parts[0]["ocr_text"].upper() and "GOOD" in parts[1]["ocr_text"].upper()
    assert parts[2]["ocr_text"] == "" and parts[2]["text_area"] == 0.0


@needs_ocr
def test_a_box_that_still_shows_its_text_is_not_recognised_again(monkeypatch):
    """A panning shot with a subtitle on an opaque band: "HELLO WORLD" for 5 s, then "GOOD NIGHT".
    Every regular reading (0, 2, 4, 6, 8 s) runs the detector (the picture moves), but a box that
    still looks as it did keeps its text: recognition runs for the first reading of each subtitle
    only, and both are found where they were shown."""
    from pipeline.ingest.signals import text

    calls = {"det": 0, "rec": 0}
    ocr = text.load_ocr()

    def counting(image, use_det=True, **kwargs):
        calls["det" if use_det else "rec"] += 1
        return ocr(image, use_det=use_det, **kwargs)

    monkeypatch.setattr(text, "load_ocr", lambda: counting)
    canvas = cv2.GaussianBlur(texture(seed=4), (0, 0), 3)
    frames = []
    for i in range(int(9 * FPS)):
        picture = crop(canvas, 500 + 3 * i, 450)                    # the scene pans under the band
        cv2.rectangle(picture, (40, 280), (600, 340), (20, 20, 20), -1)
        subtitle = "HELLO WORLD" if i < 5 * FPS else "GOOD NIGHT"
        cv2.putText(picture, subtitle, (60, 325), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 4)
        frames.append(picture)
    parts = analyse(frames, SignalsConfig(text=TextConfig(stretch=False)), ranges=[(0, 150), (150, 270)])
    assert calls["det"] == 5
    assert "HELLOWORLD" in parts[0]["ocr_text"].replace(" ", "").upper()
    assert "GOODNIGHT" in parts[1]["ocr_text"].replace(" ", "").upper()
    assert parts[1]["text_area"] > 0.02
    boxes_per_subtitle = calls["rec"] / 2
    assert boxes_per_subtitle in (1, 2)      # the detector may split a line at its space
    # without the reuse every reading recognises its boxes again: 5 readings, not 2
    calls.update(det=0, rec=0)
    monkeypatch.setattr(text, "BOX_JITTER", -1)
    analyse(frames, SignalsConfig(text=TextConfig(stretch=False)))
    assert calls["rec"] == 5 * boxes_per_subtitle


def test_small_sources_sample_sparser_up_to_max_stretch():
    """The sampled work is spaced out by full_rate_pixels / pixels on small sources, at most
    max_stretch times; 1080p and larger (and full_rate_pixels 0) sample as configured."""
    from trainer.typedconfig import ConfigError

    cfg = SignalsConfig()
    assert cfg.stretch((1920, 1080)) == cfg.stretch((3840, 2160)) == 1.0
    assert cfg.stretch((1280, 720)) == pytest.approx(2.25)
    assert cfg.stretch((640, 360)) == cfg.max_stretch == 4.0
    assert SignalsConfig(full_rate_pixels=0).stretch((640, 360)) == 1.0
    for bad in ({"max_stretch": 0.5}, {"full_rate_pixels": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SignalsConfig(**bad)


def test_spaced_flow_pairs_span_flow_step_and_read_the_same_speed():
    """Spaced out (a 360p source: a pair every 8 frames), each pair still spans flow_step frames,
    so a steady pan reads the same speed as with a pair every flow_step frames."""
    from pipeline.ingest.signals.motion import MotionAnalyzer

    frames = camera_clip("pan_left", n=45)
    dense, sparse = (MotionAnalyzer(NO_TEXT.motion, pair_every=k) for k in (4, 8))
    for i, f in enumerate(frames):
        frame = make_frame(i, f)
        dense.update(frame)
        sparse.update(frame)
    rows = sparse.pairs.window(0, 45)
    assert list(rows[:, 4]) == [0, 8, 16, 24, 32, 40]  # the first frame of each pair (its second: +4)
    a, b = dense.clip_signals(0, 45), sparse.clip_signals(0, 45)
    assert b["camera_motion"] == a["camera_motion"] == "pan_left"
    assert b["camera_dx"] == pytest.approx(a["camera_dx"], rel=0.1)
    assert b["motion_score"] == pytest.approx(a["motion_score"], rel=0.1)


def test_every_column_present_and_aesthetic_null_without_weights():
    from pipeline.library.schema import SIGNAL_COLUMNS

    (row,) = analyse(camera_clip("static", n=20), NO_TEXT)
    assert set(row) == {name for name, _, _ in SIGNAL_COLUMNS}
    assert row["aesthetic_score"] is None


def test_detail_schedule_one_per_interval():
    s = DetailSchedule(1.0)
    due = [i for i in range(95) if s.due(i / FPS)]
    assert due == [0, 30, 60, 90]


def test_background_analyzers_see_every_frame_in_order_and_hand_back_errors():
    from pipeline.ingest.analysis import BackgroundAnalyzers

    small = np.zeros((9, 16, 3), np.uint8)
    frames = [AnalysisFrame(index=i, pts_s=i / FPS, bgr=small, luma=small[..., 0]) for i in range(200)]

    class Recorder:
        name = "recorder"

        def __init__(self):
            self.seen = []

        def update(self, frame):
            self.seen.append(frame.index)

    class FailsOnFrame3(Recorder):
        def update(self, frame):
            super().update(frame)
            if frame.index == 3:
                raise ValueError("bad frame")

    rec = Recorder()
    background = BackgroundAnalyzers([rec], depth=4)
    for f in frames:
        background.update(f)
    assert background.close() is None and rec.seen == list(range(200))

    rec = Recorder()  # frames travel in batches of 16: the last, partial one is handed over by close()
    background = BackgroundAnalyzers([rec], depth=64)
    for f in frames[:199]:
        background.update(f)
    assert background.close() is None and rec.seen == list(range(199))

    failing = FailsOnFrame3()
    background = BackgroundAnalyzers([failing], depth=2)
    for f in frames:  # a dead consumer never blocks the producer
        background.update(f)
    error = background.close()
    assert isinstance(error, ValueError) and failing.seen == [0, 1, 2, 3]
    assert background.close() is error  # closing twice is harmless
