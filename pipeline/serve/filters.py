"""The UI's filter controls, compiled to the one `--where` language that `recap search`, `recap export`
and `recap caption` take, so what the page applies can be copied onto a command line as it is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from index.where import string_literal
from pipeline.library.schema import CAMERA_CLASSES


class FilterSpec(BaseModel):
    """Filter controls; every one left empty applies nothing."""
    duration_min: float | None = Field(None, ge=0, description="seconds")
    duration_max: float | None = Field(None, ge=0, description="seconds")
    motion_min: float | None = Field(None, ge=0, description="motion_score, % of frame width per second")
    motion_max: float | None = Field(None, ge=0)
    aesthetic_min: float | None = None
    aesthetic_max: float | None = None
    camera_motion: list[str] = Field(default_factory=list, description=f"any of {', '.join(CAMERA_CLASSES)}")
    ocr: Literal["any", "text", "no_text"] = Field("any", description="on-screen text read by OCR, or none")
    status: Literal["any", "passed", "rejected"] = Field("any", description="the filter view's verdict")
    duplicates: Literal["any", "exclude", "only"] = "any"
    video_id: str | None = Field(None, description="only clips of this source video")


def _num(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def build_where(spec: FilterSpec) -> str:
    """The `--where` text for `spec` ('' when it filters nothing). Raises ValueError for a value the
    language cannot hold (a camera class or video id it does not know)."""
    parts: list[str] = []
    for column, low, high in (("duration_s", spec.duration_min, spec.duration_max),
                              ("motion_score", spec.motion_min, spec.motion_max),
                              ("aesthetic_score", spec.aesthetic_min, spec.aesthetic_max)):
        if low is not None:
            parts.append(f"{column} >= {_num(low)}")
        if high is not None:
            parts.append(f"{column} <= {_num(high)}")
    if spec.camera_motion:
        bad = [c for c in spec.camera_motion if c not in CAMERA_CLASSES]
        if bad:
            raise ValueError(f"camera_motion: {bad[0]!r} is not one of {', '.join(CAMERA_CLASSES)}")
        classes = list(dict.fromkeys(spec.camera_motion))
        parts.append(f'camera_motion == "{classes[0]}"' if len(classes) == 1
                     else "camera_motion in [" + ", ".join(f'"{c}"' for c in classes) + "]")
    if spec.ocr == "text":
        parts.append('ocr_text != ""')
    elif spec.ocr == "no_text":
        parts.append('ocr_text == ""')
    if spec.status == "passed":
        parts.append("passed")
    elif spec.status == "rejected":
        parts.append("not passed")
    if spec.duplicates == "exclude":
        parts.append("not duplicate")
    elif spec.duplicates == "only":
        parts.append("duplicate")
    if spec.video_id:
        parts.append(f"video_id == {string_literal(spec.video_id)}")
    return " and ".join(parts)
