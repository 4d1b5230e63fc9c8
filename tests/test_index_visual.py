"""The visual path: frames sampled per clip (from a clip file and from the source by time), a tiny
random CLIP built locally and loaded by path through the real loader, visual and hybrid search."""

from __future__ import annotations

import copy
import json
import string
from datetime import datetime, timezone
from pathlib import Path

import av
import numpy as np
import pytest

from captioner.frames import sample_indices
from index.api import ClipIndex
from pipeline.embed import ClipFramesStage, embed_library, load_index_config, run_index
from pipeline.library import Library
from tests.index_fixtures import write_captions

FPS = 25
# one source video: four 1-second segments of distinct pictures
SEGMENTS = [(220, 30, 30), (30, 30, 220), (215, 40, 35), (30, 200, 40)]   # red, blue, red again, green


def tiny_clip(path: Path) -> Path:
    """A random-weight CLIP (2 layers, 32 wide) with a character-level tokenizer, saved like a hub model."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    torch.manual_seed(0)      # the same random model every run

    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, vocab_size=64,
                max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizerFast(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def write_segments(path: Path, segments, size=(96, 64)) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"g": "10", "bf": "2", "preset": "ultrafast"}
        for colour in segments:
            for _ in range(FPS):
                img = np.empty((size[1], size[0], 3), np.uint8)
                img[:] = colour
                img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
                for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def visual_lib(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("visual")
    source = write_segments(tmp / "source.mp4", SEGMENTS)
    root = tmp / "lib"
    lib = Library(root, write=True)
    video_id = "a" * 32
    clips = []
    for i in range(len(SEGMENTS)):
        clips.append({"clip_id": f"clip{i}", "video_id": video_id, "shot_index": i, "clip_index": i,
                      "start_frame": i * FPS, "end_frame": (i + 1) * FPS, "n_frames": FPS, "start_s": float(i),
                      "end_s": float(i + 1), "duration_s": 1.0, "fps": float(FPS), "width": 96, "height": 64,
                      "clip_mode": "reference", "path": None})
    # a fifth clip stored as a file (as remux/encode modes write), blue like clip1, with 3 lead-in
    # frames before the clip that sampling must skip
    media = root / "media" / "aa"
    media.mkdir(parents=True)
    write_segments(media / "clip4.mp4", [(240, 240, 240), (30, 30, 220)])
    clips.append({"clip_id": "clip4", "video_id": video_id, "shot_index": 4, "clip_index": 4, "start_frame": 100,
                  "end_frame": 120, "n_frames": 20, "start_s": 4.0, "end_s": 4.8, "duration_s": 0.8, "fps": 25.0,
                  "width": 96, "height": 64, "clip_mode": "remux", "path": "media/aa/clip4.mp4",
                  "file_start_frame": FPS + 3})
    lib.commit({"videos": [{"video_id": video_id, "uri": str(source), "ingested_at": datetime.now(timezone.utc)}],
                "clips": clips})
    lib.close()
    write_captions(root, {"clip0": "a red screen", "clip1": "a blue screen", "clip2": "a red picture",
                          "clip3": "a green screen", "clip4": "a blue picture"})
    return root, tiny_clip(tmp / "tiny-clip")


def test_sample_positions_are_spread_inside_the_clip():
    assert sample_indices(25, 25.0, num_frames=4, max_frames=4) == [3, 9, 15, 21]
    assert sample_indices(2, 25.0, num_frames=4, max_frames=4) == [0, 1]
    assert sample_indices(0, 25.0, num_frames=4, max_frames=4) == []


def test_frames_come_from_the_clip_range(visual_lib):
    root, _ = visual_lib
    rows = {r["clip_id"]: dict(r, hash="") for r in Library(root).clip_table().to_pylist()}
    assert rows["clip0"]["source"] == str(root.parent / "source.mp4")
    stage = ClipFramesStage(root, frames=4, cpus=1.0, batch_size=4)
    stage.setup()
    for cid, colour in [("clip0", SEGMENTS[0]), ("clip1", SEGMENTS[1]), ("clip3", SEGMENTS[3]), ("clip4", SEGMENTS[1])]:
        (out,) = stage.process([rows[cid]])
        frames = out["frames"]
        assert len(frames) == 4
        for f in frames:
            assert np.abs(f.reshape(-1, 3).mean(0) - colour).max() < 12, cid


def test_visual_and_hybrid_search_with_a_tiny_clip(visual_lib):
    root, model = visual_lib
    cfg = load_index_config(overrides=[f"embedders.visual.model={model}", "embedders.visual.enabled=true",
                                       "embedders.visual.device=cpu", "embedders.caption.device=cpu"])
    rec = run_index(root, cfg, log=lambda *_: None)
    with ClipIndex(root, cfg) as lib:
        assert rec.unembedded == {"caption": 0, "visual": 0}
        # the other red clip is the visual nearest neighbour of clip0, the blue file of clip1
        assert lib.search(like="clip0", mode="visual", top_k=1)[0].clip_id == "clip2"
        assert lib.search(like="clip1", mode="visual", top_k=1)[0].clip_id == "clip4"
        hits = lib.search("red", mode="visual", top_k=5)          # the text tower answers text queries
        assert sorted(h.clip_id for h in hits) == [f"clip{i}" for i in range(5)]
        hybrid = lib.search("a red screen", mode="hybrid", top_k=5, where="duration_s >= 1")
        assert hybrid[0].clip_id == "clip0" and "clip4" not in {h.clip_id for h in hybrid}
        assert embed_library(lib, cfg.execution, log=lambda *_: None) == {"caption": 0, "visual": 0}
        assert lib.check().clean
    # Lite's fast path (exact scan of the Parquet vectors) gives Milvus' answers, hybrid fusion included
    slow_cfg = copy.deepcopy(cfg)
    slow_cfg.milvus.exact_max_clips = 0
    with ClipIndex(root, cfg) as fast, ClipIndex(root, slow_cfg) as slow:
        for kwargs in [dict(text="red", mode="visual"), dict(text="a red screen", mode="hybrid"),
                       dict(text="a blue picture", mode="hybrid", where="duration_s < 1"),
                       dict(like="clip1", mode="hybrid"), dict(like="clip0", mode="auto"), dict(text="green")]:
            assert fast.uses_exact() and not slow.uses_exact()
            # (equal fused scores may come in either order)
            got = sorted((-round(h.score, 5), h.clip_id) for h in fast.search(top_k=4, **kwargs))
            assert got == sorted((-round(h.score, 5), h.clip_id) for h in slow.search(top_k=4, **kwargs)), kwargs
