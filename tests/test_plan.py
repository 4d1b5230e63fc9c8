"""Clip planning: margins, minimum and maximum lengths, deterministic ids."""

from __future__ import annotations

import numpy as np

from pipeline.ingest.config import ClipsConfig
from pipeline.ingest.plan import clip_id, plan_clips


def test_margins_min_and_max() -> None:
    pts = np.arange(1000) / 25.0
    cfg = ClipsConfig(min_seconds=1.0, max_seconds=10.0, margin_frames=2)
    clips = plan_clips([(0, 20), (20, 80), (80, 1000)], pts, cfg)
    # shot 0 is 0.8 s before margins: dropped; shot 1 keeps [22, 78); shot 2 (36.8 s) splits in 4
    assert (clips[0].start_frame, clips[0].end_frame) == (22, 78)
    long = [c for c in clips if c.shot_index == 2]
    assert len(long) == 4
    assert long[0].start_frame == 82 and long[-1].end_frame == 998
    for a, b in zip(long, long[1:]):
        assert a.end_frame == b.start_frame
    for c in long:
        assert c.n_frames / 25.0 <= 10.0


def test_variable_frame_rate_chunks_respect_max_seconds() -> None:
    # first half at 60 fps, second half at 10 fps: equal frame counts would give unequal seconds
    pts = np.concatenate([np.arange(600) / 60.0, 10.0 + np.arange(200) / 10.0])
    clips = plan_clips([(0, 800)], pts, ClipsConfig(min_seconds=1, max_seconds=8, margin_frames=0))
    ends = np.append(pts[1:], pts[-1] + 0.1)
    for c in clips:
        assert ends[c.end_frame - 1] - pts[c.start_frame] <= 8.0 + 1e-6


def test_clip_id_is_deterministic_and_range_sensitive() -> None:
    assert clip_id("v", 0, 10) == clip_id("v", 0, 10)
    assert len({clip_id("v", 0, 10), clip_id("v", 0, 11), clip_id("w", 0, 10)}) == 3


def test_a_gap_in_the_timestamps_costs_only_its_own_frame() -> None:
    # 25 fps with one frame shown for 20 s (a paused recording): that frame fits in no clip of at
    # most 10 s; both halves around it still become clips. It cost the whole shot (one clip: the
    # 20 s frame alone) and, splitting the shot one piece more at a time, minutes on a long video.
    n = 60_000
    pts = np.arange(n) / 25.0
    pts[n // 2:] += 20.0
    cfg = ClipsConfig(min_seconds=1.0, max_seconds=10.0, margin_frames=0)
    clips = plan_clips([(0, n)], pts, cfg)
    gap = n // 2 - 1
    assert not any(c.start_frame <= gap < c.end_frame for c in clips)
    assert sum(c.n_frames for c in clips) == n - 1
    assert {c.n_frames for c in clips} <= {249, 250}
    # a long frame that fits in a clip changes only the chunks around it
    pts = np.arange(n) / 25.0
    pts[n // 2:] += 9.5
    clips = plan_clips([(0, n)], pts, cfg)
    assert sum(c.n_frames for c in clips) > n - 100
    ends = np.append(pts[1:], pts[-1] + 0.04)
    assert all(ends[c.end_frame - 1] - pts[c.start_frame] <= 10.0 + 1e-6 for c in clips)
