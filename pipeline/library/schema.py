"""Arrow schemas of the clip library: the one place that says what every table and column is.

Each column is declared once with its type and a one-line description; the README's column
reference is generated from these declarations (`python -m pipeline.library --update-readme`),
and a test keeps the two in step. Bump SCHEMA_VERSION on any incompatible change.

The committed tables (videos, shots, clips, errors, sources) are written in batches by
`Library.commit`; the side tables (captions, embeddings) in parts of their own; the filter view
and selections are single files replaced whole. Their layout is in `pipeline/library/__init__.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = 1
CLIP_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")   # what a clip id may be (it names files: no paths)

# ---- the clip columns the signals add (measured in ingest's decode pass), all nullable -------------
CAMERA_CLASSES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky")
BARS_KINDS = ("none", "letterbox", "pillarbox", "windowbox")
CLIP_MODES = ("reference", "remux", "encode")

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


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False


def schema_of(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in columns])


COMMIT = Column("batch_id", pa.string(), "Writer batch that committed this row (see 'Writes and resume').")

VIDEO_COLUMNS = [
    Column("video_id", pa.string(), "Content hash of the source file (BLAKE2b, 32 hex chars); the same bytes under two names are one video."),
    Column("uri", pa.string(), "Source as given: absolute local path or URL."),
    Column("size_bytes", pa.int64(), "Size of the source file.", True),
    Column("container", pa.string(), "Container format as reported by FFmpeg (e.g. `mov,mp4,m4a,3gp,3g2,mj2`).", True),
    Column("video_codec", pa.string(), "Video codec name (e.g. `h264`, `vp9`).", True),
    Column("audio_codec", pa.string(), "First audio stream's codec, null when there is no audio.", True),
    Column("pix_fmt", pa.string(), "Decoder pixel format.", True),
    Column("width", pa.int32(), "Coded width in pixels.", True),
    Column("height", pa.int32(), "Coded height in pixels.", True),
    Column("display_width", pa.int32(), "Width as displayed, after sample aspect ratio and rotation.", True),
    Column("display_height", pa.int32(), "Height as displayed, after sample aspect ratio and rotation.", True),
    Column("sample_aspect_ratio", pa.float64(), "Pixel aspect ratio (1.0 = square pixels).", True),
    Column("rotation", pa.int32(), "Display rotation in degrees from the container's display matrix (0, 90, 180, 270).", True),
    Column("fps", pa.float64(), "Average frame rate: decoded frames / PTS span.", True),
    Column("is_vfr", pa.bool_(), "True when frame durations vary (variable frame rate).", True),
    Column("duration_s", pa.float64(), "Duration of the video stream in seconds.", True),
    Column("n_frames", pa.int64(), "Frames decoded in the single decode pass.", True),
    Column("decode_warnings", pa.string(), "What was wrong with a damaged stream that still decoded (truncated, packets rejected, frames decoded with errors or out of time order); null when it decoded cleanly.", True),
    Column("n_shots", pa.int32(), "Shots detected.", True),
    Column("n_clips", pa.int32(), "Clips planned from those shots.", True),
    Column("ingest_s", pa.float64(), "Wall time spent on this video by its worker.", True),
    Column("worker_node", pa.string(), "Ray node id of the worker that ingested it (null outside Ray).", True),
    Column("ingested_at", pa.timestamp("ms", tz="UTC"), "When the row was written."),
    COMMIT,
]

SHOT_COLUMNS = [
    Column("video_id", pa.string(), "Video the shot belongs to."),
    Column("shot_index", pa.int32(), "0-based index of the shot within its video."),
    Column("start_frame", pa.int64(), "First frame of the shot (0-based decode-order index)."),
    Column("end_frame", pa.int64(), "One past the last frame (end exclusive)."),
    Column("start_s", pa.float64(), "PTS of the first frame, seconds."),
    Column("end_s", pa.float64(), "PTS of the frame after the last one (or stream end), seconds."),
    Column("start_transition", pa.string(), "What precedes the shot: `start`, `cut`, `fade`, `dissolve`, `black` or `resize` (the stream switched picture size here)."),
    Column("end_transition", pa.string(), "What follows the shot: `end`, `cut`, `fade`, `dissolve`, `black` or `resize`."),
    COMMIT,
]

CLIP_COLUMNS = [
    Column("clip_id", pa.string(), "Deterministic id: hash of video_id and frame range."),
    Column("video_id", pa.string(), "Source video."),
    Column("shot_index", pa.int32(), "Shot the clip was cut from."),
    Column("clip_index", pa.int32(), "0-based index of the clip within its video."),
    Column("start_frame", pa.int64(), "First frame (0-based decode-order index in the source)."),
    Column("end_frame", pa.int64(), "One past the last frame (end exclusive)."),
    Column("n_frames", pa.int64(), "end_frame - start_frame."),
    Column("start_s", pa.float64(), "PTS of the first frame in the source, seconds."),
    Column("end_s", pa.float64(), "PTS just after the last frame, seconds."),
    Column("duration_s", pa.float64(), "end_s - start_s."),
    Column("fps", pa.float64(), "Average frame rate over the clip."),
    Column("width", pa.int32(), "Display width of the source."),
    Column("height", pa.int32(), "Display height of the source."),
    Column("clip_mode", pa.string(), "`reference` (range only), `remux` (stream copy) or `encode`."),
    Column("path", pa.string(), "Clip file relative to the library root; null in reference mode.", True),
    Column("file_start_frame", pa.int32(), "Frames to skip at the start of the file to reach start_frame (remux starts at a keyframe); 0 for encode.", True),
    Column("file_n_frames", pa.int64(), "Frames stored in the clip file.", True),
    Column("file_bytes", pa.int64(), "Size of the clip file.", True),
    Column("file_width", pa.int32(), "Coded width of the clip file's picture (encode mode with `clips.encode_width`: resized, square pixels).", True),
    Column("file_height", pa.int32(), "Coded height of the clip file's picture.", True),
    *(Column(name, type_, doc, True) for name, type_, doc in SIGNAL_COLUMNS),
    COMMIT,
]

ERROR_COLUMNS = [
    Column("source", pa.string(), "Source uri that failed."),
    Column("video_id", pa.string(), "Content hash when it could be computed.", True),
    Column("stage", pa.string(), "Where it failed: `stage` (fetch), `probe`, `decode`, `detect`, `clips`, ..."),
    Column("error_type", pa.string(), "Machine-readable kind, e.g. `empty_file`, `truncated`, `not_a_video`, `no_video_stream`, `unsupported_codec`, `permission_denied`, `not_found`, `unreachable`, `too_large` (picture over `decode.max_pixels`, download over the cache), `unsafe_input` (FIFO, device, playlist), `timeout` (over `sources.timeout_s` / `cpu_timeout_s`), `worker_crashed`, `no_space` (the disk filled while its staged copy or clip files were written: `failed`, so retried; the job stops there)."),
    Column("message", pa.string(), "What went wrong, for a person."),
    Column("at", pa.timestamp("ms", tz="UTC"), "When it happened."),
    COMMIT,
]

SOURCE_COLUMNS = [
    Column("uri", pa.string(), "A source as given on the command line or in a manifest (local paths made absolute)."),
    Column("video_id", pa.string(), "Content hash, when the source could be read.", True),
    Column("outcome", pa.string(), "`ingested`, `duplicate` (same content already in the library), `removed` (taken out with `recap remove`: not ingested again, nor its content under another name), `error` (bad input) or `failed` (unexpected; retried by the next run)."),
    Column("at", pa.timestamp("ms", tz="UTC"), "When it was handled."),
    COMMIT,
]

# Committed tables: written in batches by `Library.commit`; a batch is visible once its marker is
# in `_commits/`.
TABLES: dict[str, list[Column]] = {
    "videos": VIDEO_COLUMNS,
    "shots": SHOT_COLUMNS,
    "clips": CLIP_COLUMNS,
    "errors": ERROR_COLUMNS,
    "sources": SOURCE_COLUMNS,
}

# ---- side tables and views: written beside the committed tables, never into them -------------------
CAPTION_COLUMNS = [
    Column("clip_id", pa.string(), "Clip captioned (`clips/`)."),
    Column("version", pa.string(), "Caption version: hash of backend, model, revision, prompt and parameters (12 hex chars)."),
    Column("backend", pa.string(), "`transformers`, `openai` (a chat-completions server such as vLLM), `signals` or `import`."),
    Column("model_id", pa.string(), "HF id, local folder or served model name (`recap/signals` for the signal caption)."),
    Column("revision", pa.string(), "Model commit hash when known (else the revision asked for).", True),
    Column("prompt_id", pa.string(), "Prompt template (`configs/prompts/<id>.txt`)."),
    Column("prompt_sha", pa.string(), "Hash of the template text: an edited template is a new version."),
    Column("params", pa.string(), "JSON: frame sampling, generation and check parameters."),
    Column("text", pa.string(), "The caption, boilerplate openings stripped ('' when none)."),
    Column("status", pa.string(), "`ok`, `flagged` (checked and not usable) or `error` (not captioned; retried on rerun)."),
    Column("reason", pa.string(), "Why flagged or error (`empty`, `too_short`, `repetition`, `truncated`, `frames: ...`, "
                                  "`generate: ...`), or `trimmed` (cut back to its last sentence).", True),
    Column("attempts", pa.int32(), "Generations tried (retries are sampled)."),
    Column("n_input_tokens", pa.int32(), "Prompt tokens, frames included.", True),
    Column("n_output_tokens", pa.int32(), "Generated tokens.", True),
    Column("n_frames", pa.int32(), "Frames given to the model.", True),
    Column("latency_s", pa.float32(), "Generation seconds for the clip, all attempts (a batch's time shared by its clips).", True),
    Column("created_at", pa.timestamp("ms", tz="UTC"), "When the row was written."),
    Column("batch_id", pa.string(), "Write that added the row (its part file `part-<batch_id>.parquet`, until a compaction merges parts)."),
]

EMBEDDING_COLUMNS = [
    Column("clip_id", pa.string(), "Clip embedded."),
    Column("vector", pa.list_(pa.float32()), "The embedding, L2-normalised (a fixed-size list: its length is the embedder's dimension)."),
    Column("input_hash", pa.string(), "Hash of the model id and what was embedded: a vector whose hash differs from the clip's current one is stale."),
]

VIEW_COLUMNS = [
    Column("clip_id", pa.string(), "Clip judged."),
    Column("passed", pa.bool_(), "Passes every enabled filter and is not a near-duplicate."),
    Column("reject_reasons", pa.list_(pa.string()), "Each failed rule as `<filter>.min|max|reject|null`, or `duplicate`: the config key to change."),
    Column("duplicate_of", pa.string(), "The clip kept in this clip's near-duplicate group (null when it is not a duplicate).", True),
]

SELECTION_COLUMNS = [
    Column("clip_id", pa.string(), "Clip selected."),
    Column("added_at", pa.timestamp("ms", tz="UTC"), "When it was added to the selection."),
]

SIDE_TABLES: dict[str, list[Column]] = {
    "captions": CAPTION_COLUMNS,
    "embeddings/<embedder>": EMBEDDING_COLUMNS,
    "views/filters.parquet": VIEW_COLUMNS,
    "selections/<name>.parquet": SELECTION_COLUMNS,
}
CAPTION_SCHEMA = schema_of(CAPTION_COLUMNS)
VIEW_SCHEMA = schema_of(VIEW_COLUMNS)
SELECTION_SCHEMA = schema_of(SELECTION_COLUMNS)


def embedding_schema(dim: int) -> pa.Schema:
    """An embeddings part's schema: the vector column as a fixed-size list of `dim` floats."""
    fields = {c.name: pa.field(c.name, c.type, nullable=c.nullable) for c in EMBEDDING_COLUMNS}
    fields["vector"] = pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)
    return pa.schema(list(fields.values()))


def table_schema(table: str) -> pa.Schema:
    """Arrow schema of one committed library table."""
    return schema_of(TABLES[table])


def markdown_reference() -> str:
    """The README's column reference, generated from the declarations above."""
    lines = [f"Schema version {SCHEMA_VERSION}.", ""]
    for table, columns in [*TABLES.items(), *SIDE_TABLES.items()]:
        name = table if "." in table else f"{table}/"
        lines += [f"#### `{name}`", "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type}{' (nullable)' if c.nullable else ''} | {c.doc} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


def update_readme(path: str | Path = "README.md") -> None:
    """Rewrite the README's generated column reference in place."""
    readme = Path(path)
    text = re.sub(r"(<!-- schema:begin[^\n]*-->\n).*?(<!-- schema:end -->)",
                  lambda m: m.group(1) + markdown_reference() + "\n" + m.group(2), readme.read_text(), flags=re.S)
    readme.write_text(text)

