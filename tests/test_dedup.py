"""Near-duplicate search: exact agreement with brute force, grouping, and a real re-encoded copy."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline.filters.config import DedupConfig
from pipeline.filters.near_duplicates import near_duplicates, similar_hash_pairs
from pipeline.ingest.analysis import AnalysisFrame
from pipeline.ingest.signals.phash import PhashAnalyzer, hamming


def planted_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random hashes, a third of them copies of another with 0-10 bits flipped; owner = index // 3."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    for k in range(0, n, 3):
        src = rng.integers(0, n)
        flips = rng.choice(64, size=rng.integers(0, 11), replace=False)
        h[k] = h[src] ^ np.uint64(sum(1 << int(b) for b in flips))
    return h, np.arange(n) // 3


@pytest.mark.parametrize("threshold, bands", [(6, 4), (3, 4), (9, 3), (7, 8)])
def test_multi_index_search_equals_brute_force(threshold, bands):
    h, owner = planted_hashes(1500)
    i, j = similar_hash_pairs(h, owner, threshold, bands)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    bi, bj = np.nonzero((dist <= threshold) & (owner[:, None] < owner[None, :]))
    assert len(bi) > 50  # the planted pairs are there to be found
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(bi.tolist(), bj.tolist()))


def lists(rows: list[list[int]]) -> pa.Array:
    return pa.array(rows, pa.list_(pa.uint64()))


def test_groups_keep_the_best_ranked_member():
    rng = np.random.default_rng(1)
    base = [int(x) for x in rng.integers(0, 2**63, 3)]
    other = [int(x) for x in rng.integers(0, 2**63, 3)]
    near = [x ^ 0b1011 for x in base]                  # 3 bits off on every frame
    half = [base[0], base[1] ^ 1, int(rng.integers(0, 2**63))]  # 2 of 3 frames match
    one = [base[0], int(rng.integers(0, 2**63)), int(rng.integers(0, 2**63))]  # only 1 matches
    phash = lists([base, other, near, half, one, []])
    videos = pa.array(["a", "b", "c", "a", "d", "e"])
    rank = np.array([3, 0, 1, 2, 4, 5])
    dup = near_duplicates(phash, videos, rank, DedupConfig(hamming=6, min_matching_frames=2))
    assert dup.tolist() == [2, -1, -1, 2, -1, -1]      # 0, 2, 3 are one group; 2 ranks best

    across_only = near_duplicates(phash, videos, rank, DedupConfig(within_video=False))
    # without within-video pairs, 0~3 (both video a) is not an edge, but both still meet 2 across
    assert across_only.tolist() == [2, -1, -1, 2, -1, -1]
    videos_same = pa.array(["a"] * 6)
    assert (near_duplicates(phash, videos_same, rank, DedupConfig(within_video=False)) == -1).all()


# ---- a real re-encoded, resized copy ---------------------------------------------------------
def write_clip(path, frames: list[np.ndarray], fps: int = 25, crf: int = 23) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")))
        out.mux(stream.encode())


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def clip_hashes(frames: list[np.ndarray]) -> list[int]:
    analyzer = PhashAnalyzer(n_per_clip=3, flat_std=4.0)
    for i, bgr in enumerate(frames):
        small = cv2.resize(bgr, (160, round(bgr.shape[0] * 160 / bgr.shape[1])), interpolation=cv2.INTER_AREA)
        analyzer.update(AnalysisFrame(index=i, pts_s=i / 25, bgr=small, luma=cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)))
    return analyzer.clip_signals(0, len(frames))["phash"]


def moving_scene(seed: int, n: int = 50) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.integers(0, 255, (500, 900, 3), dtype=np.uint8), (0, 0), 6)
    canvas = cv2.normalize(canvas, None, 0, 255, cv2.NORM_MINMAX)
    return [np.ascontiguousarray(canvas[40:400, 10 + 3 * t: 650 + 3 * t]) for t in range(n)]


def test_reencoded_resized_copy_is_found_and_unrelated_clip_is_not(tmp_path):
    original, unrelated = tmp_path / "a.mp4", tmp_path / "c.mp4"
    write_clip(original, moving_scene(0))
    write_clip(unrelated, moving_scene(1))
    # the copy: decoded, shrunk to half size and re-encoded at a much lower quality
    copy = tmp_path / "b.mp4"
    write_clip(copy, [cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA) for f in decode(original)], crf=35)

    ha, hb, hc = (clip_hashes(decode(p)) for p in (original, copy, unrelated))
    assert len(ha) == len(hb) == len(hc) == 3
    assert max(hamming(x, y) for x, y in zip(ha, hb)) <= 6
    assert min(hamming(x, y) for x in ha for y in hc) > 12

    rank = np.array([1, 0, 2])  # pretend the copy ranks best: the original then points at it
    dup = near_duplicates(lists([ha, hb, hc]), pa.array(["va", "vb", "vc"]), rank, DedupConfig())
    assert dup.tolist() == [1, -1, -1]


def brute_force_groups(rows: list[list[int]], videos: list[str], rank: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """near_duplicates' rules clip pair by clip pair (the reference for the tests below)."""
    n = len(rows)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a in range(n):
        for b in range(a + 1, n):
            if not rows[a] or not rows[b] or (not cfg.within_video and videos[a] == videos[b]):
                continue
            near = [[hamming(x, y) <= cfg.hamming for y in rows[b]] for x in rows[a]]
            need = min(cfg.min_matching_frames, len(rows[a]), len(rows[b]))
            if sum(map(any, near)) >= need and sum(map(any, zip(*near))) >= need:
                parent[max(find(a), find(b))] = min(find(a), find(b))
    dup_of = np.full(n, -1)
    groups: dict[int, list[int]] = {}
    for c in range(n):
        groups.setdefault(find(c), []).append(c)
    for group in groups.values():
        if len(group) > 1:
            best = group[int(np.argmin(rank[group]))]
            dup_of[[c for c in group if c != best]] = best
    return dup_of


@pytest.mark.parametrize("within_video", [True, False])
def test_clips_with_the_same_hashes_group_as_brute_force_does(within_video):
    """Clips with the same hashes (black shots, a repeated intro) are searched once per class; the
    groups are those of comparing every pair, in either within_video mode."""
    rng = np.random.default_rng(3)
    base = [int(x) for x in rng.integers(0, np.iinfo(np.uint64).max, 6, dtype=np.uint64, endpoint=True)]
    near = base[0] ^ 0b101                                   # 2 bits from base[0]
    shapes = [[0, 0, 0], [0, 0], [0], [], [base[0], base[1]], [base[1], base[0]], [near, base[1]],
              [base[0], base[0], base[1]], [base[2], base[3], base[4]], [base[4], base[3], base[2]],
              [base[5]], [base[5], base[5]], [near]]
    rows = [list(shapes[k]) for k in rng.integers(0, len(shapes), 60)]
    videos = [f"v{k}" for k in rng.integers(0, 8, 60)]
    rank = rng.permutation(60)
    rank[:10] = 5                                            # ties: the first clip wins, as before
    cfg = DedupConfig(within_video=within_video)
    got = near_duplicates(lists(rows), pa.array(videos), rank, cfg)
    assert (got >= 0).sum() > 20
    assert got.tolist() == brute_force_groups(rows, videos, rank, cfg).tolist()


def test_many_clips_with_the_same_hashes_are_one_group():
    """20,000 black clips (the same 3 hashes each): every candidate pair was 1.8e9 frame pairs
    (a 14 GB array, MemoryError); now one class, all duplicates of the best ranked."""
    n = 20_000
    rank = np.arange(n)[::-1].copy()
    dup = near_duplicates(lists([[0, 0, 0]] * n), pa.array([f"v{k}" for k in range(n)]), rank, DedupConfig())
    assert dup[-1] == -1 and (dup[:-1] == n - 1).all()


def test_components_follow_long_chains_to_the_lowest_node():
    from pipeline.filters.near_duplicates import components

    a, b = np.array([9, 8, 7, 6, 5, 1, 11]), np.array([8, 7, 6, 5, 4, 2, 12])   # 4-...-9, 1-2, 11-12
    assert components(13, a, b).tolist() == [0, 1, 1, 3, 4, 4, 4, 4, 4, 4, 10, 11, 11]
