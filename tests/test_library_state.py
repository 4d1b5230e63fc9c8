"""No stale or leftover state, no double writers, no path out of a tampered library."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.caption.config import load_caption_config
from pipeline.caption.job import run_caption
from pipeline.cli import main
from pipeline.filters.config import load_filter_config
from pipeline.filters.evaluate import run_filters
from pipeline.library import Library, LibraryError
from pipeline.library.captions import DEFAULT_FILE
from pipeline.library.files import STALE_TMP_S
from pipeline.library.tables import checked_clip_row
from pipeline.library.views import VIEW_PATH, read_view, write_view
from tests.index_fixtures import CLIPS, clip_id, make_library


def _clip(i: int, video_id: str = "v" * 32, **extra) -> dict:
    return {"clip_id": clip_id(i), "video_id": video_id, "shot_index": 0, "clip_index": i, "start_frame": 0,
            "end_frame": 50, "n_frames": 50, "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0, "fps": 25.0,
            "width": 640, "height": 360, "clip_mode": "reference", **extra}


def test_a_view_older_than_the_newest_clips_is_called_stale(tmp_path: Path, capsys):
    lib = make_library(tmp_path / "lib")
    run_filters(lib, load_filter_config())
    assert not Library(lib).view_is_stale()
    with Library(lib, write=True) as writer:       # clips committed after the view (a kill before the refresh)
        writer.commit({"clips": [_clip(100)]})
    assert Library(lib).view_is_stale()
    assert main(["info", str(lib)]) == 0
    assert "the filter view is older than the newest clips" in capsys.readouterr().out
    run_filters(lib, load_filter_config())
    assert not Library(lib).view_is_stale()


def test_writers_clear_what_a_crash_left(tmp_path: Path):
    lib = make_library(tmp_path / "lib")
    views = lib / VIEW_PATH.parent
    old, young = views / ".filters.parquet.dead.tmp", views / ".filters.parquet.live.tmp"
    for stray in (old, young):
        stray.write_bytes(b"half a view")
    os.utime(old, (time.time() - 2 * STALE_TMP_S,) * 2)
    write_view(lib, read_view(lib)[0], {})
    assert not old.exists() and young.exists()      # a young one may be another writer's, right now

    # clip files of a video whose rows never got committed; a committed video's files stay
    orphan, kept = lib / "media" / "ab" / ("ab" * 16), lib / "media" / "vv" / ("v" * 32)
    for folder in (orphan, kept):
        folder.mkdir(parents=True)
        (folder / "x.mp4").write_bytes(b"clip")
    Library(lib, write=True).close()
    assert not orphan.exists() and (kept / "x.mp4").exists()


def test_the_default_caption_version_survives_a_kill_before_it_is_marked(tmp_path: Path):
    lib = make_library(tmp_path / "lib", with_captions=False)
    cfg = load_caption_config(None, ["model.backend=signals"])
    first = run_caption(lib, cfg, all_clips=True, progress=False)
    (lib / "captions" / DEFAULT_FILE).unlink()      # killed between the last part and default.json
    again = run_caption(lib, cfg, all_clips=True, progress=False)
    assert again.captioned == 0 and Library(lib).captions.default() == first.version


def test_a_second_caption_or_export_run_is_refused(tmp_path: Path, capsys):
    lib = make_library(tmp_path / "lib")
    with Library(lib).lock("caption"):
        assert main(["caption", str(lib), "--backend", "signals"]) == 2
        err = capsys.readouterr().err
        assert f"another recap process (pid {os.getpid()}) is running `recap caption`" in err
    assert main(["caption", str(lib), "--backend", "signals", "--all"]) == 0
    capsys.readouterr()
    assert main(["caption", str(lib), "--backend", "signals", "--limit", "-1"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("tamper, message", [
    ({"clip_id": "../../evil"}, "is not an id"),
    ({"path": "../../outside.mp4"}, "is outside the library"),
    ({"path": "/etc/passwd"}, "is outside the library"),
    ({"path": "media/link.mp4"}, "is outside the library"),      # a symlink that leads out
])
def test_a_tampered_library_is_refused_not_followed(tmp_path: Path, capsys, tamper: dict, message: str):
    lib = make_library(tmp_path / "lib")
    (lib / "media").mkdir(exist_ok=True)
    (lib / "media" / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    with Library(lib, write=True) as writer:
        writer.commit({"clips": [_clip(200, clip_mode="remux") | tamper]})
    if tamper.get("path") != "media/link.mp4":      # rows are checked when read; a symlink where a file is opened
        with pytest.raises(LibraryError, match=message):
            Library(lib).clips()
    else:     # every reader that opens a clip file goes through one of these two
        row = Library(lib).clips().to_pylist()[-1]
        with pytest.raises(LibraryError, match=message):
            Library(lib).media_path(row["path"])
        with pytest.raises(LibraryError, match=message):
            checked_clip_row(lib, row)
        return
    for argv in (["report", str(lib), "--out", str(tmp_path / "report")],
                 ["export", str(lib), "--out", str(tmp_path / "shards")]):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "shards").exists()


def test_clip_table_is_one_row_per_clip_with_the_view(tmp_path: Path):
    lib = make_library(tmp_path / "lib")
    table = Library(lib).clip_table()
    assert table.num_rows == len(CLIPS) and table.column("clip_id").to_pylist() == sorted(clip_id(i) for i in range(len(CLIPS)))
    assert {"source", "passed", "duplicate_of", "caption", "caption_version"} <= set(table.column_names)
    assert pa.types.is_boolean(table.schema.field("passed").type)
