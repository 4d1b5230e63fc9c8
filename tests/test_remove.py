"""`recap remove`: sources taken out for good (a takedown, a folder ingested by mistake): every
row, file and derived row of their videos goes in one step, later runs skip them and their content
under another name, and a crash between the steps leaves nothing a rerun does not clean."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import pipeline.library.tables as tables
from pipeline.cli.remove import _sync_index, matching
from pipeline.library import Library, LibraryError
from pipeline.library.embeddings import read_embeddings, write_embeddings
from pipeline.library.layout import media_dir, utcnow
from pipeline.library.schema import table_schema
from pipeline.library.selections import read_selection, write_selection
from pipeline.library.views import VIEW_PATH, write_view
from tests.conftest import recap


def _row(table: str, **values) -> dict:
    """A row of `table` with every required column filled (zeros, 'x') unless given."""
    row = {}
    for f in table_schema(table):
        if f.name == "batch_id" or f.nullable:
            continue
        row[f.name] = (utcnow() if pa.types.is_timestamp(f.type) else 0 if pa.types.is_integer(f.type)
                       else 0.0 if pa.types.is_floating(f.type) else "x")
    return {**row, **values}


def _commit_video(lib: Library, n: int, uris: list[str] | None = None) -> list[str]:
    """One batch: video `id{n}` from `uris` (the first ingested, the others duplicates), two shots,
    two clips, their clip files; returns the clip ids."""
    uris = uris or [f"/raw/v{n}.mp4"]
    vid, clips = f"id{n}", [f"c{n}a", f"c{n}b"]
    folder = media_dir(lib.root, vid)
    folder.mkdir(parents=True)
    for c in clips:
        (folder / f"{c}.mp4").write_bytes(b"clip")
    lib.commit({
        "videos": [_row("videos", video_id=vid, uri=uris[0])],
        "shots": [_row("shots", video_id=vid, shot_index=i) for i in range(2)],
        "clips": [_row("clips", clip_id=c, video_id=vid, path=f"media/{vid[:2]}/{vid}/{c}.mp4") for c in clips],
        "sources": [_row("sources", uri=u, video_id=vid, outcome="ingested" if i == 0 else "duplicate")
                    for i, u in enumerate(uris)],
    })
    return clips


def _library(tmp_path: Path) -> Library:
    """Four videos in four batches (video 1 under two names), a failed source, captions, vectors,
    a selection and a filter view over every clip."""
    lib = Library(tmp_path / "lib", write=True)
    clips = []
    for n in range(4):
        clips += _commit_video(lib, n, ["/raw/v1.mp4", "/copies/v1.mp4"] if n == 1 else None)
    lib.commit({"errors": [_row("errors", source="/raw/broken.mp4", message="bad")],
                "sources": [_row("sources", uri="/raw/broken.mp4", outcome="error")]})
    lib.captions.append([{"clip_id": c, "version": "v1", "backend": "signals", "model_id": "m", "prompt_id": "p",
                          "prompt_sha": "s", "params": "{}", "text": f"caption of {c}", "status": "ok", "attempts": 1}
                         for c in clips])
    write_embeddings(lib.root, "caption", "m", clips, np.ones((len(clips), 4)), ["h"] * len(clips))
    write_selection(lib.root, "picked", ["c0a", "c1a", "c2b"])
    write_view(lib.root, pa.table({"clip_id": clips, "passed": [True] * len(clips),
                                   "reject_reasons": [[] for _ in clips], "duplicate_of": [None] * len(clips)}),
               {}, lib.newest_batch())
    return lib


def _everything(root: Path) -> dict[str, list]:
    lib = Library(root)
    return {
        "videos": sorted(lib.read("videos").column("video_id").to_pylist()),
        "shots": len(lib.read("shots")),
        "clips": sorted(lib.read("clips").column("clip_id").to_pylist()),
        "errors": lib.read("errors").column("source").to_pylist(),
        "sources": lib.handled_sources(),
        "captions": sorted(lib.captions.read().column("clip_id").to_pylist()),
        "vectors": sorted(read_embeddings(root, "caption", "m").column("clip_id").to_pylist()),
        "selection": read_selection(root, "picked"),
        "view": sorted(pa.parquet.read_table(root / VIEW_PATH).column("clip_id").to_pylist()),
        "media": sorted(p.name for p in (root / "media").glob("*/*")),
    }


def test_a_removed_source_takes_its_video_and_every_name_of_its_content(tmp_path) -> None:
    lib = _library(tmp_path)
    videos, uris = lib.removal_of(set(), {"/copies/v1.mp4"})
    assert videos == {"id1"} and uris == {"/raw/v1.mp4", "/copies/v1.mp4"}   # a copy's name leads to the video
    counts = lib.remove(videos, uris | {"/raw/broken.mp4"})
    lib.close()
    got = _everything(lib.root)
    assert got["videos"] == ["id0", "id2", "id3"]
    assert got["shots"] == 6
    assert got["clips"] == ["c0a", "c0b", "c2a", "c2b", "c3a", "c3b"]
    assert got["errors"] == []
    assert got["sources"] == {"/raw/v0.mp4": "ingested", "/raw/v2.mp4": "ingested", "/raw/v3.mp4": "ingested",
                              "/raw/v1.mp4": "removed", "/copies/v1.mp4": "removed", "/raw/broken.mp4": "removed"}
    assert got["captions"] == got["vectors"] == got["view"] == got["clips"]
    assert got["selection"] == ["c0a", "c2b"]                # order kept, the removed entry gone
    assert got["media"] == ["id0", "id2", "id3"]
    assert counts["clips"] == 2 and counts["captions"] == 2 and counts["media"] == 1
    # only the batches that held a removed row were rewritten: the others' parts are untouched
    assert len(list((lib.root / "clips").glob("part-*.parquet"))) == 4
    assert Library(lib.root).removed_video_ids() == {"id1"}


def test_content_that_was_removed_is_not_ingested_again_under_another_name(tmp_path) -> None:
    lib = _library(tmp_path)
    lib.remove(*lib.removal_of(set(), {"/raw/v1.mp4"}))
    claims = lib.start_claims()
    assert claims.claim("id1", "/elsewhere/renamed.mp4") == "removed"
    assert claims.claim("id0", "/elsewhere/v0.mp4") == "duplicate"
    assert claims.claim("id9", "/raw/new.mp4") is None
    assert claims.claim("id9", "/raw/new.mp4") is None        # a retry of the same source keeps its claim
    assert claims.claim("id9", "/raw/other.mp4") == "duplicate"
    claims.close()


@pytest.mark.parametrize("step", ["marker", "replaced", "derived"])
def test_a_crash_at_any_step_leaves_a_library_the_rerun_finishes(tmp_path, monkeypatch, step) -> None:
    lib = _library(tmp_path)
    before = _everything(lib.root)
    removal = lib.removal_of(set(), {"/raw/v2.mp4"})
    real_write = tables.atomic_write_bytes

    def crash_on_marker(path, data):
        if step == "marker" and path.name.endswith(".compact.json"):
            raise KeyboardInterrupt        # the new parts are written, the marker is not
        real_write(path, data)

    def crash(self, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(tables, "atomic_write_bytes", crash_on_marker)
    if step == "replaced":                 # the marker is in place, the replaced parts not removed yet
        monkeypatch.setattr(Library, "_remove_replaced", crash)
    if step == "derived":                  # the tables are done, captions, vectors, files not yet
        monkeypatch.setattr(Library, "drop_orphans", crash)
    with pytest.raises(KeyboardInterrupt):
        lib.remove(*removal)
    monkeypatch.undo()
    lib.close()
    now = _everything(lib.root)
    if step == "marker":                   # readers see the library as it was
        assert now == before
    else:                                  # readers see the tables without video 2, never a row twice
        assert now["clips"] == ["c0a", "c0b", "c1a", "c1b", "c3a", "c3b"]
        assert sorted(now["sources"]) == sorted(before["sources"])
    lib = Library(lib.root, write=True)    # the next writer's recovery, then the same removal again
    lib.remove(*lib.removal_of(set(), {"/raw/v2.mp4"}))
    lib.close()
    after = _everything(lib.root)
    assert after["clips"] == after["captions"] == after["vectors"] == after["view"] == \
        ["c0a", "c0b", "c1a", "c1b", "c3a", "c3b"]
    assert after["media"] == ["id0", "id1", "id3"] and after["sources"]["/raw/v2.mp4"] == "removed"
    assert after["selection"] == ["c0a", "c1a"]
    assert len(Library(lib.root).read("sources")) == len(before["sources"])   # v2 marked removed, no row twice


def test_no_removal_while_an_index_run_embeds_and_each_lock_names_its_holder(tmp_path) -> None:
    """An index (or caption) run that read the clips before a removal would embed (caption) removed
    clips after its cleanup and sync them back into Milvus: a removal waits for neither, and a lock
    holder says what it is doing (remove holds the caption and index locks)."""
    lib = _library(tmp_path)
    lib.close()
    root = lib.root
    with Library(root).lock("index", shared=True):      # what an index run holds
        refused = recap("remove", str(root), "/raw/v0.mp4", "--yes", check=False)
    assert refused.returncode == 2 and "is running `recap index`" in refused.stderr, refused.stderr
    assert Library(root).handled_sources()["/raw/v0.mp4"] == "ingested"        # nothing removed
    with Library(root).lock("caption", by="remove"):
        with pytest.raises(LibraryError, match="is running `recap remove` on"):
            with Library(root).lock("caption"):
                pass


def _ingest(sources: list[Path], lib: Path) -> str:
    return recap("ingest", *map(str, sources), "--out", str(lib), "--no-progress", timeout=900).stdout


def test_recap_remove_end_to_end(sample_corpus, tmp_path) -> None:
    """Real ingest, captions and a Milvus Lite index; `recap remove` says what would go, removes
    it with --yes, syncs the index and is recorded; a rerun of the ingest skips it, and a copy of
    it under another name is not ingested again."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("cuts.mp4", "portrait.mp4"):
        shutil.copy(sample_corpus / name, raw / name)
    lib = tmp_path / "lib"
    _ingest([raw], lib)
    recap("caption", str(lib), "--backend", "signals", "--all", "--no-progress")
    recap("index", str(lib), "--no-progress")
    before = Library(lib)
    gone = {c for c, v in zip(before.read("clips").column("clip_id").to_pylist(),
                              before.read("clips").column("video_id").to_pylist())
            if before.source_uris()[v].endswith("cuts.mp4")}
    assert gone

    dry = recap("remove", str(lib), str(raw / "cuts.mp4"))
    assert f"1 source(s), 1 video(s), {len(gone)} clip(s) would go" in dry.stdout and "add --yes" in dry.stdout
    assert Library(lib).read("clips").num_rows == before.read("clips").num_rows    # nothing changed
    missing = recap("remove", str(lib), str(raw / "nope.mp4"), check=False)
    assert missing.returncode == 2 and "no source" in missing.stderr

    thumbs = lib / ".ui" / "thumbs"          # what `recap serve` showed of them goes too
    thumbs.mkdir(parents=True)
    for c in before.read("clips").column("clip_id").to_pylist():
        (thumbs / f"{c}.jpg").write_bytes(b"jpeg")
    done = recap("remove", str(lib), str(raw / "cuts.mp4"), "--yes")
    assert f"index: {len(gone)} vectors removed" in done.stdout, done.stdout
    after = Library(lib)
    left = set(after.read("clips").column("clip_id").to_pylist())
    assert left and not left & gone
    assert {p.stem for p in thumbs.iterdir()} == left
    assert recap("index", str(lib), "--check").returncode == 0               # Milvus matches Parquet
    hits = [json.loads(line) for line in recap("search", str(lib), "a shot", "--top-k", "50", "--json").stdout.splitlines()]
    assert {h["clip_id"] for h in hits} == left
    assert json.loads((lib / "library.json").read_text())["removals"][0]["clips"] == len(gone)

    shutil.copy(raw / "cuts.mp4", raw / "cuts_again.mp4")
    out = _ingest([raw], lib)
    assert "2 already done, 0 ingested, 0 duplicate content, 1 removed content" in out, out
    assert set(Library(lib).read("clips").column("clip_id").to_pylist()) == left
    assert json.loads(recap("info", str(lib), "--json").stdout)["removed_sources"] == 2


def test_a_glob_matches_as_ingest_globs_never_into_subfolders(tmp_path) -> None:
    """`*` stays in its folder (fnmatch's crosses `/`: `raw/*.mp4` took `raw/keep/x.mp4` too, for
    good); `**` crosses folders; a name with glob characters is itself first."""
    known = dict.fromkeys(["/raw/a.mp4", "/raw/keep/b.mp4", "/raw/[1].mp4", "/raw/1.mp4",
                           "https://cdn.example.org/v/x.mp4", "https://cdn.example.org/v/sub/y.mp4"], "ingested")
    assert matching("/raw/*.mp4", known) == {"/raw/a.mp4", "/raw/[1].mp4", "/raw/1.mp4"}
    assert matching("/raw/?.mp4", known) == {"/raw/a.mp4", "/raw/1.mp4"}
    assert matching("/raw/**/*.mp4", known) == {"/raw/a.mp4", "/raw/keep/b.mp4", "/raw/[1].mp4", "/raw/1.mp4"}
    assert matching("/raw/**/b.mp4", known) == {"/raw/keep/b.mp4"}
    assert matching("/raw/[1].mp4", known) == {"/raw/[1].mp4"}
    assert matching("/raw/[!a1]*", known) == {"/raw/[1].mp4"}
    assert matching("https://cdn.example.org/v/*", known) == {"https://cdn.example.org/v/x.mp4"}
    assert matching("/raw/", known) == matching("/raw", known) == matching("/raw/**", known)
    assert len(matching("/raw", known)) == 4


def test_frames_of_removed_clips_go_even_when_the_first_try_crashed(tmp_path, monkeypatch) -> None:
    """The web UI's thumbnails and the reports in the library (`LIB/report`, the server's
    `LIB/.ui/report`) show removed clips' frames: they go with the rows, also on the rerun after
    a crash between the tables' step and the rest (the removed clips' ids are not known then)."""
    lib = _library(tmp_path)
    clips = lib.read("clips").column("clip_id").to_pylist()
    folders = [lib.root / ".ui", lib.root / ".ui" / "report", lib.root / "report"]
    for folder in folders:
        (folder / "thumbs").mkdir(parents=True)
        for c in clips:
            (folder / "thumbs" / f"{c}.jpg").write_bytes(b"jpeg")
    for folder in folders[1:]:
        (folder / "index.html").write_text("<img src='thumbs/c2a.jpg'>")

    def crash(self, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(Library, "drop_orphans", crash)
    with pytest.raises(KeyboardInterrupt):
        lib.remove(*lib.removal_of(set(), {"/raw/v2.mp4"}))
    monkeypatch.undo()
    lib.close()
    lib = Library(lib.root, write=True)
    counts = lib.remove(*lib.removal_of(set(), {"/raw/v2.mp4"}))
    lib.close()
    left = {c for c in clips if not c.startswith("c2")}
    for folder in folders:
        assert {p.stem for p in (folder / "thumbs").iterdir()} == left
    assert not any((folder / "index.html").exists() for folder in folders[1:])
    assert counts["thumbnails"] == 6 and counts["reports"] == 2


def test_a_removal_follows_every_link_between_names_and_contents(tmp_path) -> None:
    """A uri whose rows name two videos (it failed with one content, was later a duplicate of
    another) links them: the closure is followed to its end, not two steps."""
    lib = Library(tmp_path / "lib", write=True)
    for n in range(4):
        _commit_video(lib, n)
    lib.commit({"sources": [_row("sources", uri="/raw/v0.mp4", video_id="id1", outcome="failed"),
                            _row("sources", uri="/raw/v1.mp4", video_id="id2", outcome="failed"),
                            _row("sources", uri="/raw/v2.mp4", video_id="id3", outcome="failed")]})
    videos, uris = lib.removal_of(set(), {"/raw/v0.mp4"})
    assert videos == {"id0", "id1", "id2", "id3"} and len(uris) == 4
    lib.close()


def test_batches_a_removal_left_alone_are_still_compacted(tmp_path) -> None:
    """A removal replaces only the batches holding removed rows; the others, committed before it,
    are merged by the next compaction (they were skipped as if already compacted: up to
    COMPACT_PARTS small parts more for every reader, per removal)."""
    lib = Library(tmp_path / "lib", write=True)
    for n in range(5):
        _commit_video(lib, n)
    lib.remove(*lib.removal_of(set(), {"/raw/v1.mp4"}))
    for n in range(5, 10):
        _commit_video(lib, n)
    assert lib.compact(min_parts=3) is not None
    assert len(lib.parts("clips")) == 2                    # the removal's part and one merged part
    assert sorted(set(lib.read("clips").column("video_id").to_pylist())) == [f"id{n}" for n in range(10) if n != 1]
    lib.close()


def test_removing_every_clip_removes_the_lite_index_too(tmp_path) -> None:
    """With no clip left the index cannot be synced (`recap index` refuses an empty library, the
    advice to run `--repair` with it): the Lite store, holding every removed clip's vector and
    fields, is removed instead."""
    lib = Library(tmp_path / "lib", write=True)
    _commit_video(lib, 0)
    store = lib.root / "milvus.db"
    (store / "collections").mkdir(parents=True)
    (store / "LOCK").write_bytes(b"")
    lib.remove(*lib.removal_of(set(), {"/raw/v0.mp4"}))
    lib.close()
    said = _sync_index(lib.root, argparse.Namespace(milvus_uri=None, token=None))
    assert "no clips left" in said and not store.exists(), said


def test_no_filter_run_beside_a_removal(tmp_path) -> None:
    """A filter run took no lock: one that read the clips before a removal wrote its view after it,
    naming removed clips (its source batch unchanged, so not even shown stale). A filter run is
    refused while a removal runs, and a removal while a filter run does; filter runs may overlap."""
    lib = _library(tmp_path)
    lib.close()
    root = lib.root
    view = (root / VIEW_PATH).read_bytes()
    with Library(root).lock("filter", by="remove"):      # what a removal holds
        refused = recap("filter", str(root), check=False)
        assert refused.returncode == 2 and "is running `recap remove`" in refused.stderr, refused.stderr
    assert (root / VIEW_PATH).read_bytes() == view                             # not rewritten
    with Library(root).lock("filter", shared=True):      # what a filter run holds
        assert recap("filter", str(root)).returncode == 0      # another filter run
        refused = recap("remove", str(root), "/raw/v0.mp4", "--yes", check=False)
    assert refused.returncode == 2 and "is running `recap filter`" in refused.stderr, refused.stderr
    assert Library(root).handled_sources()["/raw/v0.mp4"] == "ingested"        # nothing removed
    assert recap("remove", str(root), "/raw/v0.mp4", "--yes").returncode == 0
