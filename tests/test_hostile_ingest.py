"""Ingest against inputs a demanding user (or an attacker) brings: odd picture sizes, codecs no
container of ours can stream-copy, audio files with cover art, manifests saved by Excel, and
command lines that point output at a file. Every case is a real file made with PyAV or the
ffmpeg CLI and goes through the real worker or the real `recap` entry point; each one failed
before its fix (a traceback, a `failed` row retried on every run, or a video refused)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.ingest import shots
from pipeline.ingest.config import load_ingest_config
from pipeline.ingest.decode import detail_size
from pipeline.ingest.probe import ProbeError, probe
from pipeline.ingest.sources import read_manifest
from pipeline.ingest.worker import ingest_source
from pipeline.library import Library, LibraryError
from pipeline.stages.runner import RayStartError, init_ray
from tests.avfiles import flush, frame_image, write_video

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")


def _write(path: Path, codec: str, size: tuple[int, int], pix_fmt: str = "yuv420p", n_frames: int = 40,
           fps: int = 25, audio: str | None = None) -> Path:
    """`n_frames` moving frames (`frame_image`) with `codec`, optionally a 1 kHz tone in `audio`."""
    width, height = size
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = width, height, pix_fmt
        a = out.add_stream(audio, rate=8000, layout="mono") if audio else None
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, max(width, 16), max(height, 16))[:height, :width],
                                               format="rgb24")
            for packet in v.encode(frame):
                out.mux(packet)
            if a is not None:
                tone = (8000 * np.sin(np.arange(320) * 2 * np.pi / 8)).astype(np.int16)[None]
                af = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
                af.sample_rate, af.pts = 8000, i * 320
                for packet in a.encode(af):
                    out.mux(packet)
        flush(out, v, a)
    return path


def _ingest(path: Path, lib: Path, *overrides: str):
    return ingest_source(str(path), load_ingest_config(overrides=list(overrides)), lib)


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# --------------------------------------------------------------------------------------------
# Picture sizes


@pytest.mark.parametrize("size", [(161, 121), (3, 3), (1, 1)])
def test_odd_and_tiny_picture_sizes_are_ingested(tmp_path: Path, size: tuple[int, int]) -> None:
    """An odd width under `signals.detail_width` made the detail frame odd: I420 chroma did not
    fit it (ValueError), and a 1 px wide one divided by zero; the video was refused."""
    video = _write(tmp_path / "odd.mkv", "libx264", size, pix_fmt="yuv444p")
    result = _ingest(video, tmp_path / "lib")
    assert result.outcome == "ingested", result.rows.get("errors")
    row = result.rows["videos"][0]
    assert (row["width"], row["height"], row["n_frames"]) == (*size, 40)
    if size[0] > 100:      # a picture with content gives a clip, measured
        assert result.n_clips == 1
        assert result.rows["clips"][0]["sharpness"] is not None


def _ts_segment(path: Path, size: tuple[int, int], first: int, n_frames: int = 75, fps: int = 25) -> Path:
    """An MPEG-TS segment of `n_frames` at `size`, its timestamps starting at frame `first`."""
    with av.open(str(path), "w", format="mpegts") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = *size, "yuv420p"
        v.codec_context.time_base = Fraction(1, fps)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, *size), format="rgb24")
            frame.pts = first + i
            for packet in v.encode(frame):
                out.mux(packet)
        flush(out, v)
    return path


def test_a_stream_that_switches_picture_size_gives_clips_of_each_size(tmp_path: Path) -> None:
    """Stitched HLS renditions (a TS at 320x240 followed by one at 640x480): every clip row said
    the first size, and its bar crop was in those pixels, while the later clip's file was 640x480.
    Shots are now split where the size changes, and each clip says its own size."""
    joined = tmp_path / "switch.ts"
    joined.write_bytes(b"".join(_ts_segment(tmp_path / f"{i}.ts", size, first).read_bytes()
                                for i, (size, first) in enumerate([((320, 240), 0), ((640, 480), 80)])))
    result = _ingest(joined, tmp_path / "lib")
    assert result.outcome == "ingested", result.rows.get("errors")
    assert [(s["start_transition"], s["end_transition"]) for s in result.rows["shots"]] == \
        [("start", "resize"), ("resize", "end")]
    clips = result.rows["clips"]
    assert [(c["width"], c["height"]) for c in clips] == [(320, 240), (640, 480)]
    assert [(c["crop_w"], c["crop_h"]) for c in clips] == [(320, 240), (640, 480)]
    for clip in clips:                   # each clip file holds the size its row says
        with av.open(str(tmp_path / "lib" / clip["path"])) as f:
            frame = next(f.decode(video=0))
        assert (frame.width, frame.height) == (clip["width"], clip["height"])


@pytest.mark.parametrize("width", [1, 3, 161, 479, 480, 1920])
def test_detail_frames_are_even_and_never_wider_than_the_source(width: int) -> None:
    w, h = detail_size((160, 90), width, 480)
    assert w % 2 == 0 and h % 2 == 0 and w >= 2 and h >= 2
    assert w <= max(2, width) and w <= 480


# --------------------------------------------------------------------------------------------
# Codecs


@pytest.mark.parametrize("name,codec,size", [
    ("flash.flv", "flv", (160, 96)),           # Sorenson H.263: .flv is a default extension
    ("windows.wmv", "wmv2", (160, 96)),        # .wmv
    ("phone.3gp", "h263", (176, 144)),         # .3gp (H.263 allows only a few sizes)
])
def test_video_no_container_can_stream_copy_is_encoded(tmp_path: Path, name: str, codec: str,
                                                      size: tuple[int, int]) -> None:
    """Remux (the default) tried to stream-copy these into Matroska, which refuses them: every
    such video was a `failed` row, retried on every rerun. Now their clips are encoded."""
    video = _write(tmp_path / name, codec, size, n_frames=50)
    lib = tmp_path / "lib"
    result = _ingest(video, lib)
    assert result.outcome == "ingested", result.rows.get("errors")
    clip = result.rows["clips"][0]
    assert clip["clip_mode"] == "encode"
    assert _decoded_frames(lib / clip["path"]) == clip["n_frames"] == clip["file_n_frames"]


def test_audio_no_container_holds_is_left_out_of_a_stream_copy(tmp_path: Path) -> None:
    """H.264 with PCM mu-law audio (QuickTime): the clip is still a stream copy, video only,
    instead of a `failed` row."""
    video = _write(tmp_path / "mulaw.mov", "libx264", (160, 96), n_frames=50, audio="pcm_mulaw")
    lib = tmp_path / "lib"
    result = _ingest(video, lib)
    assert result.outcome == "ingested", result.rows.get("errors")
    clip = result.rows["clips"][0]
    assert clip["clip_mode"] == "remux"
    with av.open(str(lib / clip["path"])) as c:
        assert len(c.streams.video) == 1 and not c.streams.audio
    assert _decoded_frames(lib / clip["path"]) == clip["n_frames"]


@needs_ffmpeg
@pytest.mark.parametrize("name,audio_codec", [("song.mp4", "aac"), ("song.mp3", "libmp3lame")])
def test_audio_with_cover_art_is_no_video_stream(tmp_path: Path, name: str, audio_codec: str) -> None:
    """Album art is FFmpeg's "attached picture" video stream: such a file was ingested as a
    one-frame video (90000 fps, "cut off?") instead of being named audio only."""
    cover = tmp_path / "cover.png"
    av.VideoFrame.from_ndarray(frame_image(0, 64, 48), format="rgb24").to_image().save(cover)
    song = tmp_path / name
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=2",
                    "-i", str(cover), "-map", "0", "-map", "1", "-c:a", audio_codec, "-c:v", "mjpeg",
                    "-disposition:v", "attached_pic", str(song)], check=True)
    with pytest.raises(ProbeError) as e:
        probe(song)
    assert e.value.kind == "no_video_stream"
    assert "cover picture" in str(e.value)
    result = _ingest(song, tmp_path / "lib")
    assert result.outcome == "error" and result.rows["errors"][0]["error_type"] == "no_video_stream"


# --------------------------------------------------------------------------------------------
# Manifests


def test_manifests_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" and Notepad start the file with a BOM: the csv had no 'uri' column,
    the txt's first path was wrong and the jsonl did not parse."""
    bom = "\ufeff"
    (tmp_path / "m.csv").write_text(bom + "uri,label\r\na.mp4,x\r\nb.mp4,y\r\n", encoding="utf-8")
    (tmp_path / "m.txt").write_text(bom + "a.mp4\r\nb.mp4\r\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text(bom + json.dumps({"uri": "a.mp4"}) + "\n" + json.dumps({"uri": "b.mp4"}),
                                      encoding="utf-8")
    for name in ("m.csv", "m.txt", "m.jsonl"):
        assert [s.uri for s in read_manifest(tmp_path / name)] == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]


# --------------------------------------------------------------------------------------------
# Command lines: one clear line and exit 2, never a traceback


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_config_that_is_not_yaml(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clips:\n  max_seconds: 5\n\tmin_seconds: 1\n")
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "lib"), "--config", str(bad)]) == 2
    err = _error_line(capsys)
    assert str(bad) in err and "line 3" in err
    assert main(["filter", str(tmp_path), "--config", str(bad)]) == 2
    assert "not valid YAML" in _error_line(capsys)
    assert not (tmp_path / "lib").exists()


def test_output_paths_that_are_files(tmp_path: Path, capsys) -> None:
    video = write_video(tmp_path / "v.mp4", n_frames=10)
    for out in (video, video / "lib"):
        assert main(["ingest", str(video), "--out", str(out), "--no-progress"]) == 2
        assert str(video) in _error_line(capsys)
        assert main(["samples", str(out)]) == 2
        assert str(video) in _error_line(capsys)
    assert main(["info", str(video)]) == 2
    assert "is a file" in _error_line(capsys)


def test_report_into_a_file(tmp_path: Path, capsys) -> None:
    video = write_video(tmp_path / "v.mp4", n_frames=60)
    lib = tmp_path / "lib"
    assert main(["ingest", str(video), "--out", str(lib), "--no-progress",
                 "--set", "signals.text.enabled=false", "--set", "clips.mode=reference"]) == 0
    capsys.readouterr()
    assert main(["report", str(lib), "--out", str(video)]) == 2
    assert "cannot write the report" in _error_line(capsys)


def test_a_damaged_library_record(tmp_path: Path, capsys) -> None:
    for text in ("{", "[1]"):
        (tmp_path / "library.json").write_text(text)
        with pytest.raises(LibraryError):
            Library(tmp_path)
        assert main(["info", str(tmp_path)]) == 2
        assert "library.json" in _error_line(capsys)


def test_samples_into_a_folder_of_other_files(tmp_path: Path, capsys) -> None:
    """`recap samples` wrote its videos into any folder, a library's or a user's own videos (a
    file of the same name overwritten); an earlier corpus is still written over."""
    own = tmp_path / "mine"
    own.mkdir()
    (own / "mixed.mkv").write_bytes(b"the user's own video")
    assert main(["samples", str(own)]) == 2
    assert "not empty (mixed.mkv)" in _error_line(capsys)
    assert (own / "mixed.mkv").read_bytes() == b"the user's own video"
    corpus = tmp_path / "corpus"
    assert main(["samples", str(corpus)]) == 0
    assert main(["samples", str(corpus), "--seed", "1"]) == 0
    assert json.loads((corpus / "truth.json").read_text())["seed"] == 1


@pytest.mark.parametrize("seconds", ["-1", "0", "inf", "nan"])
def test_samples_benchmark_length_is_checked(tmp_path: Path, capsys, seconds: str) -> None:
    assert main(["samples", str(tmp_path / "s"), "--benchmark", seconds]) == 2
    assert "--benchmark" in _error_line(capsys)
    assert not (tmp_path / "s").exists()       # refused before writing the corpus


def test_info_on_a_library_without_clips(tmp_path: Path, capsys) -> None:
    """`recap info` sent the user to `recap filter`, which refuses a library without clips."""
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert main(["ingest", str(tmp_path / "empty.mp4"), "--out", str(tmp_path / "lib"), "--no-progress"]) == 3
    capsys.readouterr()
    assert main(["info", str(tmp_path / "lib")]) == 0
    out = capsys.readouterr().out
    assert "empty_file=1" in out and "no clips yet" in out and "run `recap filter`" not in out


def test_info_lists_the_sources_failing_now(tmp_path: Path, capsys) -> None:
    """After "2 source(s) failed: see LIB/errors/" a user had to read Parquet to learn which. And
    the summary counted error rows, which are history: a source a later run ingested still counted."""
    ok, late = write_video(tmp_path / "ok.mp4", n_frames=60), tmp_path / "late.mp4"
    (tmp_path / "list.txt").write_text(f"{ok}\n{late}\n")
    lib = tmp_path / "lib"
    args = ["--out", str(lib), "--no-progress", "--set", "signals.text.enabled=false"]
    assert main(["ingest", str(tmp_path / "list.txt"), *args]) == 3
    assert f"1 source(s) failed: `recap info {lib} --errors` lists them" in capsys.readouterr().err
    assert main(["info", str(lib), "--errors"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"  {late}", "      error: not_found at fetch: no such file"]
    assert main(["info", str(lib), "--errors", "--json"]) == 0
    [failing] = json.loads(capsys.readouterr().out)
    assert (failing["uri"], failing["outcome"], failing["error_type"]) == (str(late), "error", "not_found")
    write_video(late, n_frames=70)                                    # the file arrives: retried, ingested
    assert main(["ingest", str(tmp_path / "list.txt"), *args, "--set", "sources.retry_errors=true"]) == 0
    capsys.readouterr()
    assert main(["info", str(lib), "--errors"]) == 0
    assert capsys.readouterr().out.strip() == "no failing sources"
    assert main(["info", str(lib), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == {"count": 0, "kinds": {}}
    assert Library(lib).read("errors").num_rows == 1                  # the history is kept


def test_a_library_inside_the_source_folder_is_not_a_source(tmp_path: Path, capsys) -> None:
    """`recap ingest . --out lib` then a rerun (to resume, or for new videos): the walk found the
    library's own clip files under lib/media/ and ingested each as a new video."""
    write_video(tmp_path / "v.mp4", n_frames=100)
    lib = tmp_path / "lib"
    args = ["--out", str(lib), "--no-progress", "--set", "signals.text.enabled=false"]
    assert main(["ingest", str(tmp_path), *args]) == 0
    capsys.readouterr()
    assert list((lib / "media").rglob("*.mp4"))                      # clip files a walk could find
    for source in (str(tmp_path), f"{tmp_path}/**/*.mp4"):
        assert main(["ingest", source, *args]) == 0
        assert "0 ingested" in capsys.readouterr().out
    assert Library(lib).read("videos").num_rows == 1
    assert main(["ingest", str(lib / "media"), *args]) == 2           # only a library there: say so
    assert f"skipped the recap library {lib}" in _error_line(capsys)


def test_file_names_that_are_not_utf8_or_hold_control_characters(tmp_path: Path, capsys) -> None:
    """A Latin-1 name (not valid UTF-8) reached Parquet as a lone surrogate: the commit raised
    UnicodeEncodeError and the whole run's work was lost. Such a name is stored with its stray
    byte as an escape, the rerun knows it as done, and what the commands print stays one line
    per clip whatever the name holds (a newline, a terminal escape)."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"caf\xe9.mp4", b"new\nline.mp4", b"\x1b[31mred.mp4"]
    for i, name in enumerate(names):
        write_video(Path(os.fsdecode(bytes(folder) + b"/" + name)), n_frames=60 + 10 * i)   # distinct content
    lib = tmp_path / "lib"
    args = ["--out", str(lib), "--no-progress", "--set", "signals.text.enabled=false"]
    assert main(["ingest", str(folder), *args]) == 0
    assert "3 ingested" in capsys.readouterr().out
    uris = sorted(Library(lib).read("videos", ["uri"]).column("uri").to_pylist())
    assert uris == sorted([f"{folder}/\x1b[31mred.mp4", f"{folder}/caf\\xe9.mp4", f"{folder}/new\nline.mp4"])
    assert main(["ingest", str(folder), *args]) == 0                  # the rerun: nothing left to do
    assert "3 already done, 0 ingested" in capsys.readouterr().out
    assert main(["caption", str(lib), "--backend", "signals", "--all"]) == 0
    assert main(["index", str(lib)]) == 0
    capsys.readouterr()
    assert main(["search", str(lib), "a shot", "--top-k", "3"]) == 0
    hits = [line for line in capsys.readouterr().out.splitlines() if str(folder) in line]
    assert len(hits) == 3 and "\x1b" not in "".join(hits)
    assert any("new\\nline.mp4" in h for h in hits) and any("\\x1b[31mred.mp4" in h for h in hits)
    latin1 = os.fsdecode(bytes(folder) + b"/" + names[0])                 # as json.dumps writes it: \udce9
    (tmp_path / "given.jsonl").write_text(json.dumps({"uri": latin1, "caption": "a cafe"}) + "\n")
    assert main(["caption", str(lib), "--from", str(tmp_path / "given.jsonl")]) == 0
    imported = capsys.readouterr().out
    assert "): 1 clips captioned" in imported and "not in the library" not in imported


def test_folders_whose_names_are_not_utf8(tmp_path: Path, capsys) -> None:
    """Parquet files are opened by UTF-8 path: a library (or an export) in a folder named in
    Latin-1 ingested every video, then crashed at the first commit. It is refused first, with
    nothing created; a Parquet manifest under such a name is read."""
    latin1 = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    video = write_video(tmp_path / "v.mp4", n_frames=60)
    args = ["--no-progress", "--set", "signals.text.enabled=false"]
    assert main(["ingest", str(video), "--out", str(latin1 / "lib"), *args]) == 2
    assert f"{tmp_path}/caf\\xe9/lib: a library's path must be valid UTF-8" in _error_line(capsys)
    assert not latin1.exists()
    manifest = Path(os.fsdecode(bytes(tmp_path) + b"/list\xe9.parquet"))
    with manifest.open("wb") as f:
        pq.write_table(pa.table({"uri": [str(video)]}), f)
    lib = tmp_path / "lib"
    assert main(["ingest", str(manifest), "--out", str(lib), *args]) == 0
    assert "1 ingested" in capsys.readouterr().out
    assert main(["export", str(lib), "--out", str(latin1), "--no-progress"]) == 2
    assert "--out must be valid UTF-8" in _error_line(capsys)
    assert not latin1.exists()


def test_a_url_python_cannot_parse(tmp_path: Path, capsys) -> None:
    """An unclosed IPv6 bracket or a port that is not a number made urlparse raise: as an
    argument a traceback, as one line of a manifest the end of the whole job."""
    bad = ["http://[::1/x.mp4", "http://host:port/x.mp4"]
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join(bad) + "\n")
    assert [s.uri for s in read_manifest(manifest)] == bad
    for uri in bad:
        result = _ingest(uri, tmp_path / "lib")
        assert result.outcome == "error"        # bad input, not retried on every rerun
        assert result.rows["errors"][0]["error_type"] == "unsupported_url"
        assert "not a valid URL" in result.rows["errors"][0]["message"]
    assert main(["ingest", bad[0], "--out", str(tmp_path / "lib2")]) == 2
    assert "not a valid URL" in _error_line(capsys)


def test_a_folder_with_an_unrelated_library_json_is_walked(tmp_path: Path) -> None:
    """Only a real library (library.json and _commits/) is skipped, not some other tool's file."""
    (tmp_path / "raw").mkdir()
    write_video(tmp_path / "raw" / "v.mp4", n_frames=60)
    (tmp_path / "raw" / "library.json").write_text("{}")
    assert main(["ingest", str(tmp_path / "raw"), "--out", str(tmp_path / "lib"), "--no-progress",
                 "--set", "clips.mode=reference", "--set", "signals.text.enabled=false"]) == 0
    assert Library(tmp_path / "lib").read("videos").num_rows == 1


def test_a_ray_address_nothing_listens_on_is_refused_at_once():
    """Ray retries a dead cluster address for many minutes without a word: the job checks that the
    address takes a connection first and says which, in one line."""
    with socket.socket() as s:          # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RayStartError, match=rf"127\.0\.0\.1:{port}'.*refused"):
        init_ray(f"127.0.0.1:{port}")


def test_a_bug_of_ours_in_the_decode_pass_is_retried_not_blamed_on_the_file(tmp_path: Path, monkeypatch) -> None:
    """A file the decoder rejects is bad input (`error`: not retried); an exception from our own
    analysis code inside the pass is not the file's fault: `failed`, retried on the next run, with
    where it happened."""
    good = _write(tmp_path / "good.mp4", "libx264", (64, 48))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[:2000])     # its header, then nothing decodable

    def broken(self, frame):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(shots.ShotDetector, "update", broken)
    result = _ingest(good, tmp_path / "lib")
    assert result.outcome == "failed"
    (error,) = result.rows["errors"]
    assert error["error_type"] == "ZeroDivisionError"
    assert "a bug of ours (test_hostile_ingest.py:" in error["message"]       # where it happened
    assert _ingest(bad, tmp_path / "lib2").outcome == "error"
