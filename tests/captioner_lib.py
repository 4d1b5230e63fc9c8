"""A small clip library for the captioner tests: real H.264 files, clip rows in all three clip
modes (encode, remux with a keyframe offset, reference), written through `Library.commit`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.library import Library
from pipeline.library.layout import utcnow
from tests.avfiles import frame_image, write_video

FPS = 25
SIZE = (160, 96)


def frame_code(frame: np.ndarray) -> tuple[float, float]:
    """The (red, blue) means that `frame_image(i)` encodes its index in (bar excluded)."""
    h = frame.shape[0]
    band = frame[: h // 4]  # above the moving white bar
    return float(band[..., 0].mean()), float(band[..., 2].mean())


def nearest_index(frame: np.ndarray, candidates: range, size: tuple[int, int] = SIZE) -> int:
    """Which `frame_image(i)` (i in candidates) a decoded, resized frame is."""
    code = np.array(frame_code(frame))
    dists = [np.abs(np.array(frame_code(frame_image(i, *size))) - code).sum() for i in candidates]
    return candidates[int(np.argmin(dists))]


def _clip_row(video_id: str, index: int, start: int, end: int, mode: str, path: str | None,
              file_start: int | None, signals: dict | None = None) -> dict:
    clip_id = hashlib.blake2b(f"{video_id}:{start}:{end}".encode(), digest_size=8).hexdigest()
    row = {"clip_id": clip_id, "video_id": video_id, "shot_index": index, "clip_index": index,
           "start_frame": start, "end_frame": end, "n_frames": end - start, "start_s": start / FPS,
           "end_s": end / FPS, "duration_s": (end - start) / FPS, "fps": float(FPS), "width": SIZE[0],
           "height": SIZE[1], "clip_mode": mode, "path": path, "file_start_frame": file_start,
           "file_n_frames": None, "file_bytes": None}
    row.update(signals or {})
    return row


def make_library(root: Path, signals: bool = True) -> tuple[Path, list[dict]]:
    """LIB with one 100-frame source video and three clips of it:
    encode  frames 10..40 in their own file (file_start_frame 0)
    remux   frames 55..85 in a file that starts at keyframe 50 (file_start_frame 5)
    reference frames 60..99, read from the source video."""
    src = write_video(root / "source.mp4", n_frames=100, fps=FPS, size=SIZE, gop=25)
    lib = Library(root / "lib", write=True)
    video_id = "v" * 32
    media = root / "lib" / "media"
    enc = _write_range(media / "enc.mp4", 10, 40)
    remux = _write_range(media / "remux.mp4", 50, 85)
    extra = [{"camera_motion": "pan_left", "motion_score": 5.0, "brightness": 120.0, "colorfulness": 40.0,
              "contrast": 50.0, "ocr_text": "OPEN DAILY"},
             {"camera_motion": "static", "motion_score": 0.2, "brightness": 30.0, "colorfulness": 5.0,
              "contrast": 20.0, "ocr_text": ""},
             {"camera_motion": None, "motion_score": None, "brightness": None, "colorfulness": None,
              "contrast": None, "ocr_text": None}]
    clips = [
        _clip_row(video_id, 0, 10, 40, "encode", str(enc.relative_to(root / "lib")), 0, extra[0] if signals else None),
        _clip_row(video_id, 1, 55, 85, "remux", str(remux.relative_to(root / "lib")), 5, extra[1] if signals else None),
        _clip_row(video_id, 2, 60, 100, "reference", None, None, extra[2] if signals else None),
    ]
    lib.commit({"videos": [{"video_id": video_id, "uri": str(src), "ingested_at": utcnow(), "fps": float(FPS)}]})
    lib.close()
    write_clips(root / "lib", clips)
    return root / "lib", clips


def write_clips(lib_root: Path, clips: list[dict]) -> None:
    """Commit clip rows (signal columns included) as ingest does."""
    with Library(lib_root, write=True) as lib:
        lib.commit({"clips": clips})


def _write_range(path: Path, start: int, end: int) -> Path:
    """Frames [start, end) of the source pattern as their own file (as encode/remux would leave them)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        s.options = {"g": "25", "bf": "0", "preset": "ultrafast"}
        for i in range(start, end):
            for packet in s.encode(av.VideoFrame.from_ndarray(frame_image(i, *SIZE), format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def tiny_model(tmp_path_factory, family: str) -> Path:
    """A tiny random-weight `family` model saved to a temp folder (see tests.support.tiny_vlm)."""
    from tests.support.tiny_vlm import build_tiny_model

    return build_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))


def fast_config(model: str | Path, *extra: str):
    """A CaptionConfig for tests: few small frames, short outputs, CPU."""
    from pipeline.caption.config import load_caption_config

    overrides = [f"model.id={model}", "frames.num_frames=3", "frames.max_pixels=12544",
                 "generation.max_new_tokens=16", "model.batch_size=2", "model.device=cpu"]
    overrides += list(extra)
    return load_caption_config(None, overrides)
