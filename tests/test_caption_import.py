"""`recap caption LIB --from FILE.jsonl`: given captions become their own caption version, matched
to clips by source uri and time range; the same file twice adds nothing; bad files fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.caption.importer import overlap
from pipeline.cli import main
from pipeline.library.captions import CaptionStore, read_captions
from tests.captioner_lib import make_library


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture()
def library(tmp_path: Path) -> tuple[Path, list[dict]]:
    # one 4 s source (25 fps) with clips at 0.4-1.6 s, 2.2-3.4 s and 2.4-4.0 s
    return make_library(tmp_path)


def test_captions_match_by_source_and_time_range(library, tmp_path: Path, capsys):
    lib, clips = library
    captions = write_lines(tmp_path / "captions.jsonl", [          # relative uri: from the file's folder
        {"uri": "source.mp4", "start_s": 0.0, "end_s": 2.0, "caption": "the first part"},
        {"uri": "source.mp4", "start_s": 2.0, "end_s": 4.0, "text": "the second part"},
        {"uri": "elsewhere.mp4", "caption": "a video the library does not have"},
    ])
    assert main(["caption", str(lib), "--from", str(captions)]) == 0
    out = capsys.readouterr().out
    assert "3 clips captioned" in out and "1 of 3 lines matched no clip" in out and "1 uris not in" in out
    got = dict(zip(*(read_captions(lib).column(c).to_pylist() for c in ("clip_id", "text"))))
    assert got == {clips[0]["clip_id"]: "the first part", clips[1]["clip_id"]: "the second part",
                   clips[2]["clip_id"]: "the second part"}
    store = CaptionStore(lib)
    (version,) = [v["version"] for v in store.versions()]
    assert store.default() == version and store.versions()[0]["backend"] == "import"

    assert main(["caption", str(lib), "--from", str(captions)]) == 0     # the same file: nothing new
    assert "0 clips captioned, 3 already done" in capsys.readouterr().out
    assert len(store.read(latest=False)) == 3


def test_a_clip_needs_half_of_it_covered_and_an_edited_file_is_a_new_version(library, tmp_path: Path, capsys):
    lib, clips = library
    first = write_lines(tmp_path / "a.jsonl", [{"uri": str(tmp_path / "source.mp4"), "caption": "whole video"}])
    assert main(["caption", str(lib), "--from", str(first)]) == 0
    partial = write_lines(tmp_path / "b.jsonl", [     # covers 0.3 s of the 1.2 s first clip only
        {"uri": str(tmp_path / "source.mp4"), "start_s": 1.3, "end_s": 2.0, "caption": "a sliver"}])
    assert main(["caption", str(lib), "--from", str(partial), "--make-default"]) == 0
    assert "0 clips captioned" in capsys.readouterr().out.splitlines()[-2]
    store = CaptionStore(lib)
    assert len(store.versions()) == 1                  # nothing written for b.jsonl: no new version
    assert read_captions(lib).column("text").to_pylist() == ["whole video"] * 3
    assert overlap(0.4, 1.6, 1.3, 2.0) == pytest.approx(0.25)
    assert overlap(0.4, 1.6, None, None) == 1.0


@pytest.mark.parametrize("content,message", [
    ("not json\n", "not JSON"),
    ('{"uri": "source.mp4"}\n', "needs 'uri' and 'caption'"),
    ('{"uri": "source.mp4", "caption": "x", "start_s": 3, "end_s": 1}\n', "end_s must be after start_s"),
    ("\n", "no captions"),
    # a range that is not a number: a traceback (list), a message without its line (word), or, for
    # NaN, no error at all and a caption for every clip of the video
    ('{"uri": "source.mp4", "caption": "x", "start_s": [1], "end_s": 2}\n', "bad.jsonl:1: start_s must be a number"),
    ('{"uri": "source.mp4", "caption": "x", "end_s": {"s": 2}}\n', "bad.jsonl:1: end_s must be a number"),
    ('{"uri": "source.mp4", "caption": "x", "start_s": "soon"}\n', "bad.jsonl:1: start_s must be a number"),
    ('{"uri": "source.mp4", "caption": "x", "start_s": "NaN", "end_s": "NaN"}\n', "start_s must be a number"),
    ('{"uri": "source.mp4", "caption": "x", "start_s": true}\n', "start_s must be a number"),
    ('{"uri": ["source.mp4"], "caption": "x"}\n', "needs 'uri' and 'caption'"),
    (b'\xff{"uri": "source.mp4", "caption": "x"}\n', "bad.jsonl: not UTF-8"),
])
def test_bad_caption_files_fail_without_writing(library, tmp_path: Path, capsys, content: str | bytes, message: str):
    lib, _ = library
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["caption", str(lib), "--from", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert CaptionStore(lib).versions() == []
