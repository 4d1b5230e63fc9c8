"""Arrow schemas of the clip library: the one place that says what every table and column is.

Each column is declared once with its type and a one-line description; the README's column
reference is generated from these declarations (`python -m pipeline.schema --update-readme`), and a test keeps
the two in step. Bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.signals.columns import SIGNAL_COLUMNS

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False


def _schema(columns: list[Column]) -> pa.Schema:
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
    Column("start_transition", pa.string(), "What precedes the shot: `start`, `cut`, `fade`, `dissolve` or `black`."),
    Column("end_transition", pa.string(), "What follows the shot: `end`, `cut`, `fade`, `dissolve` or `black`."),
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
    *(Column(name, type_, doc, True) for name, type_, doc in SIGNAL_COLUMNS),
    COMMIT,
]

ERROR_COLUMNS = [
    Column("source", pa.string(), "Source uri that failed."),
    Column("video_id", pa.string(), "Content hash when it could be computed.", True),
    Column("stage", pa.string(), "Where it failed: `stage` (fetch), `probe`, `decode`, `detect`, `clips`, ..."),
    Column("error_type", pa.string(), "Machine-readable kind, e.g. `empty_file`, `truncated`, `not_a_video`, `no_video_stream`, `unsupported_codec`, `permission_denied`, `not_found`, `unreachable`."),
    Column("message", pa.string(), "What went wrong, for a person."),
    Column("at", pa.timestamp("ms", tz="UTC"), "When it happened."),
    COMMIT,
]

SOURCE_COLUMNS = [
    Column("uri", pa.string(), "A source as given on the command line or in a manifest (local paths made absolute)."),
    Column("video_id", pa.string(), "Content hash, when the source could be read.", True),
    Column("outcome", pa.string(), "`ingested`, `duplicate` (same content already in the library), `error` (bad input) or `failed` (unexpected; retried by the next run)."),
    Column("at", pa.timestamp("ms", tz="UTC"), "When it was handled."),
    COMMIT,
]

TABLES: dict[str, list[Column]] = {
    "videos": VIDEO_COLUMNS,
    "shots": SHOT_COLUMNS,
    "clips": CLIP_COLUMNS,
    "errors": ERROR_COLUMNS,
    "sources": SOURCE_COLUMNS,
}


def table_schema(table: str) -> pa.Schema:
    """Arrow schema of one library table."""
    return _schema(TABLES[table])


def markdown_reference() -> str:
    """The README's column reference, generated from the declarations above."""
    lines = [f"Schema version {SCHEMA_VERSION}.", ""]
    for table, columns in TABLES.items():
        lines += [f"#### `{table}/`", "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type}{' (nullable)' if c.nullable else ''} | {c.doc} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


def update_readme(path: str = "README.md") -> None:
    """Rewrite the README's generated column reference in place."""
    import re
    from pathlib import Path

    readme = Path(path)
    text = re.sub(r"(<!-- schema:begin[^\n]*-->\n).*?(<!-- schema:end -->)",
                  lambda m: m.group(1) + markdown_reference() + "\n" + m.group(2), readme.read_text(), flags=re.S)
    readme.write_text(text)


if __name__ == "__main__":
    import sys

    if "--update-readme" in sys.argv:
        update_readme()
    else:
        print(markdown_reference())
