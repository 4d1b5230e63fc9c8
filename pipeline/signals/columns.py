"""The clip columns the signals add to `LIB/clips/`: (name, Arrow type, one-line doc), all nullable.

Declared here, apart from the analyzers, so the library schema can import them without OpenCV
or the models (`pipeline/schema.py` merges SIGNAL_COLUMNS into the clips table).
"""

from __future__ import annotations

import pyarrow as pa

CAMERA_CLASSES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky")

MOTION_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("motion_score", pa.float32(), "Mean optical-flow magnitude (Farneback on 80 px frames, by default between every 4th frame), % of frame width per second."),
    ("camera_motion", pa.string(), "Camera motion class: " + ", ".join(CAMERA_CLASSES) + "."),
    ("camera_dx", pa.float32(), "Median horizontal camera-model translation, % width/s (> 0: scene moves right, camera pans left)."),
    ("camera_dy", pa.float32(), "Median vertical camera-model translation, % width/s (> 0: scene moves down, camera tilts up)."),
    ("camera_zoom", pa.float32(), "Median zoom rate of the camera model, % scale change per second (> 0: zoom in)."),
    ("camera_shake", pa.float32(), "RMS of the camera translation around its smoothed path, % width/s."),
]

EXPOSURE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("brightness", pa.float32(), "Mean luma (0-255) over the clip's frames."),
    ("contrast", pa.float32(), "Mean over frames of the luma standard deviation (0-255 scale)."),
    ("colorfulness", pa.float32(), "Mean Hasler-Suesstrunk colourfulness M (0 = grey, > 100 extremely colourful)."),
    ("black_share", pa.float32(), "Share of frames whose mean luma is below `exposure.black_luma`."),
    ("blank_share", pa.float32(), "Share of frames of one flat colour (luma std below `exposure.blank_std`), black included."),
    ("frozen_share", pa.float32(), "Share of frames (after the first) in runs of >= `exposure.frozen_min_run` frames nearly identical to their predecessor (freeze, still image)."),
]

BARS_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("bars", pa.string(), "Black bars: `none`, `letterbox` (top/bottom), `pillarbox` (left/right) or `windowbox` (both)."),
    ("crop_x", pa.int32(), "Left of the crop that removes the bars, source (coded) pixels."),
    ("crop_y", pa.int32(), "Top of that crop, source pixels."),
    ("crop_w", pa.int32(), "Width of that crop, source pixels (the full width when there are no pillarbox bars)."),
    ("crop_h", pa.int32(), "Height of that crop, source pixels."),
]

SHARPNESS_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("sharpness", pa.float32(), "Mean variance of the Laplacian of the luma on the sampled detail frames (bars excluded); higher is sharper."),
]

TEXT_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("text_area", pa.float32(), "Largest share of a sampled frame covered by detected text boxes (0-1)."),
    ("ocr_text", pa.string(), "Text read by OCR on the sampled frames, distinct lines joined by ' | ' (empty when none)."),
]

AESTHETIC_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("aesthetic_score", pa.float32(), "Mean aesthetic score (CLIP/SigLIP + LAION-style head) of the sampled detail frames; null when no model is configured."),
]

PHASH_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("phash", pa.list_(pa.uint64()), "64-bit pHashes of frames spread evenly inside the clip (flat frames skipped), for near-duplicate search."),
]

SIGNAL_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    *MOTION_COLUMNS, *EXPOSURE_COLUMNS, *BARS_COLUMNS, *SHARPNESS_COLUMNS, *TEXT_COLUMNS,
    *AESTHETIC_COLUMNS, *PHASH_COLUMNS,
]
