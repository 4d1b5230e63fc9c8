"""`recap serve`'s JSON API over a real library on disk (real clip files, captions, filter view and a
real MiniLM + exact/Milvus Lite index), through Starlette's TestClient: paging bounds, `where`
errors, filter controls, search, clip details, selections exported as chosen, and the notices a
library without captions or index shows. Also the library builders the other test_serve files use."""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import uvicorn
from fastapi.testclient import TestClient

from pipeline.embed import load_index_config, run_index
from pipeline.export.selection import select
from pipeline.library import Library
from pipeline.library.layout import media_dir, utcnow
from pipeline.library.selections import read_selection
from pipeline.library.views import write_view
from pipeline.serve import create_app
from pipeline.serve.catalog import MAX_HITS, MAX_PAGE
from tests.avfiles import write_video
from tests.index_fixtures import CLIPS, clip_id, write_captions

FPS = 25
SIZE = (160, 96)
VIDEO_FILES = "a" * 32       # clips 0-8 have their own files (8: remux, 5 frames into its file)
VIDEO_REF = "b" * 32         # clips 9-10 are reference clips of a source outside the library
REMUX = 8
REFERENCE = (9, 10)
OCR = {1: "OPEN DAILY", 3: "EXIT 12"}


def caption_only_config():
    return load_index_config(overrides=["embedders.visual.enabled=false"])


def build_library(base: Path, captions: bool = True, view: bool = True) -> Path:
    """LIB under `base` with the 11 clips of tests/index_fixtures.CLIPS (their captions, durations,
    camera motion, pass/duplicate verdicts), H.264 clip files for clips 0-8, and a local source
    video outside the library for the reference clips 9-10."""
    root = base / "lib"
    base.mkdir(parents=True, exist_ok=True)
    source = write_video(base / "source.mp4", n_frames=12 * FPS, fps=FPS, size=SIZE, gop=25, bframes=0)
    lib = Library(root, write=True)
    lib.commit({"videos": [{"video_id": VIDEO_FILES, "uri": "/data/gone.mp4", "ingested_at": utcnow(), "fps": 25.0},
                           {"video_id": VIDEO_REF, "uri": str(source), "ingested_at": utcnow(), "fps": 25.0}]})
    rows, t = [], 0.0
    for i, (_, dur, camera, _passed, _dup) in enumerate(CLIPS):
        n = int(dur * FPS)
        ref = i in REFERENCE
        video = VIDEO_REF if ref else VIDEO_FILES
        start = int(t * FPS) if not ref else (i - REFERENCE[0]) * 4 * FPS
        row = {"clip_id": clip_id(i), "video_id": video, "shot_index": i, "clip_index": i, "start_frame": start,
               "end_frame": start + n, "n_frames": n, "start_s": start / FPS, "end_s": (start + n) / FPS,
               "duration_s": dur, "fps": float(FPS), "width": SIZE[0], "height": SIZE[1],
               "camera_motion": camera, "motion_score": float(i), "ocr_text": OCR.get(i, ""),
               "clip_mode": "reference" if ref else ("remux" if i == REMUX else "encode")}
        if not ref:
            skip = 5 if i == REMUX else 0
            path = media_dir(root, video) / f"{clip_id(i)}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, n_frames=n + skip, fps=FPS, size=SIZE, gop=25, bframes=0)
            row.update(path=str(path.relative_to(root)), file_start_frame=skip, file_n_frames=n + skip,
                       file_bytes=path.stat().st_size)
        rows.append(row)
        t += dur
    lib.commit({"clips": rows})
    newest = lib.newest_batch()
    lib.close()
    if view:
        ids = [clip_id(i) for i in range(len(CLIPS))]
        write_view(root, pa.table({
            "clip_id": ids, "passed": [c[3] for c in CLIPS],
            "reject_reasons": [[] if c[3] else ["motion.min"] for c in CLIPS],
            "duplicate_of": [None if c[4] is None else clip_id(c[4]) for c in CLIPS]}), {}, source_batch=newest)
    if captions:
        write_captions(root, {clip_id(i): c[0] for i, c in enumerate(CLIPS)})
    return root


def index_library(root: Path) -> Path:
    run_index(root, caption_only_config(), log=lambda *_: None)
    return root


@contextlib.contextmanager
def serving(root: Path, **kwargs) -> Iterator[str]:
    """A real uvicorn server for `root` on a free loopback port, in a thread; stopped on exit."""
    app = create_app(root, caption_only_config(), **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return index_library(build_library(tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def client(indexed) -> Iterator[TestClient]:
    with TestClient(create_app(indexed, caption_only_config())) as c:
        yield c


def ids_of(page: dict) -> list[str]:
    return [c["clip_id"] for c in page["items"]]


def test_status_of_a_complete_library_has_no_notices(client):
    s = client.get("/api/status").json()
    assert s["clips"] == len(CLIPS) and s["videos"] == 2
    assert s["passed"] == sum(c[3] for c in CLIPS) and s["duplicates"] == 1 and s["with_file"] == 9
    assert s["search_modes"] == {"caption": True, "visual": False, "hybrid": False}
    assert s["notices"] == [] and len(s["caption_versions"]) == 1
    assert s["limits"] == {"max_page": MAX_PAGE, "max_hits": MAX_HITS}


def test_pages_cover_every_clip_once_and_limits_are_enforced(client):
    seen = []
    for offset in range(0, len(CLIPS) + 4, 4):
        page = client.get("/api/clips", params={"offset": offset, "limit": 4}).json()
        assert page["total"] == len(CLIPS) and len(page["items"]) <= 4
        seen += ids_of(page)
    assert seen == sorted(clip_id(i) for i in range(len(CLIPS)))
    assert client.get("/api/clips", params={"limit": MAX_PAGE + 1}).status_code == 422
    assert client.get("/api/clips", params={"offset": -1}).status_code == 422
    assert client.get("/api/clips", params={"offset": 10_000}).json()["items"] == []
    assert client.get("/api/search", params={"q": "dog", "limit": MAX_PAGE + 1}).status_code == 422
    assert client.get("/api/search", params={"q": "dog", "offset": MAX_HITS + 1}).status_code == 422
    assert client.get("/api/videos", params={"limit": MAX_PAGE + 1}).status_code == 422


def test_sorting(client):
    page = client.get("/api/clips", params={"sort": "duration_s", "desc": True, "limit": 3}).json()
    assert [c["duration_s"] for c in page["items"]] == sorted((c[1] for c in CLIPS), reverse=True)[:3]
    r = client.get("/api/clips", params={"sort": "nonsense"})
    assert r.status_code == 400 and "sort" in r.json()["detail"]


def test_where_filters_and_its_errors_are_400_with_the_message(client):
    page = client.get("/api/clips", params={"where": "duration_s > 5 and not duplicate"}).json()
    want = {clip_id(i) for i, c in enumerate(CLIPS) if c[1] > 5 and c[4] is None}
    assert set(ids_of(page)) == want and page["total"] == len(want)
    r = client.get("/api/clips", params={"where": "duraton_s > 5"})
    assert r.status_code == 400 and "duraton_s" in r.json()["detail"] and "^" in r.json()["detail"]
    r = client.get("/api/clips", params={"where": "duration_s > 5 and"})
    assert r.status_code == 400 and r.json()["detail"].startswith("where: ")
    assert client.get("/api/where/check", params={"where": "camera_motion == \"pan_sideways\""}).status_code == 400
    assert client.get("/api/where/check", params={"where": "passed"}).json() == {"ok": True}


def test_filter_controls_compile_to_the_where_language(client):
    spec = {"duration_min": 3, "duration_max": 6.5, "camera_motion": ["static", "pan_right"], "status": "passed",
            "duplicates": "exclude", "ocr": "no_text", "video_id": VIDEO_FILES}
    where = client.post("/api/where", json=spec).json()["where"]
    assert where == ('duration_s >= 3 and duration_s <= 6.5 and camera_motion in ["static", "pan_right"] and '
                     f'ocr_text == "" and passed and not duplicate and video_id == "{VIDEO_FILES}"')
    got = set(ids_of(client.get("/api/clips", params={"where": where}).json()))
    want = {clip_id(i) for i, c in enumerate(CLIPS) if 3 <= c[1] <= 6.5 and c[2] in ("static", "pan_right")
            and c[3] and c[4] is None and i not in OCR and i not in REFERENCE}
    assert got == want and got
    assert client.post("/api/where", json={}).json() == {"where": ""}
    assert client.post("/api/where", json={"ocr": "text"}).json()["where"] == 'ocr_text != ""'
    r = client.post("/api/where", json={"camera_motion": ["sideways"]})
    assert r.status_code == 400 and "sideways" in r.json()["detail"]
    hostile = client.post("/api/where", json={"video_id": 'x" or passed'}).json()["where"]
    assert hostile == 'video_id == "x\\" or passed"'     # quoted as a value, not read as an expression
    assert ids_of(client.get("/api/clips", params={"where": hostile}).json()) == []


def test_search_more_like_this_and_where_in_search(client):
    page = client.get("/api/search", params={"q": "puppy dashing over the shore as the sun goes down",
                                             "limit": 3}).json()
    assert ids_of(page)[0] in (clip_id(0), clip_id(10)) and page["items"][0]["score"] > 0
    assert page["items"][0]["caption"] and page["items"][0]["rank"] == 1
    like = client.get("/api/search", params={"like": clip_id(0), "limit": 3}).json()
    assert clip_id(0) not in ids_of(like) and ids_of(like)[0] == clip_id(10)      # its near-duplicate first
    prefix = client.get("/api/search", params={"like": clip_id(0)[:8], "limit": 3}).json()
    assert ids_of(prefix) == ids_of(like)
    filtered = client.get("/api/search", params={"q": "a dog on the beach", "where": "not duplicate"}).json()
    assert clip_id(10) not in ids_of(filtered) and filtered["total"] == len(CLIPS) - 1
    second = client.get("/api/search", params={"q": "a dog on the beach", "offset": 2, "limit": 2}).json()
    first = client.get("/api/search", params={"q": "a dog on the beach", "limit": 4}).json()
    assert ids_of(second) == ids_of(first)[2:4]
    r = client.get("/api/search", params={"q": "dog", "where": "duration_s >"})
    assert r.status_code == 400 and "where" in r.json()["detail"]
    assert client.get("/api/search").status_code == 400
    r = client.get("/api/search", params={"like": "ffffffffffff"})
    assert r.status_code == 400 and "no clip" in r.json()["detail"]


def test_clip_details(client):
    c = client.get(f"/api/clips/{clip_id(10)}").json()
    assert c["duplicate_of"] == clip_id(0) and c["source"].endswith("source.mp4") and c["end_s"] > c["start_s"]
    assert c["duplicate_group"] == {"kept": clip_id(0), "members": [clip_id(0), clip_id(10)]}
    assert [v["text"] for v in c["captions"]] == [CLIPS[10][0]] and c["captions"][0]["default"]
    rejected = client.get(f"/api/clips/{clip_id(4)}").json()
    assert rejected["passed"] is False and rejected["reject_reasons"] == ["motion.min"]
    assert rejected["duplicate_group"] is None
    listed = client.get("/api/clips", params={"where": "not passed"}).json()["items"]
    assert [c["reject_reasons"] for c in listed] == [["motion.min"]]
    assert client.get("/api/clips/ffffffffffffffff").status_code == 404
    assert client.get("/api/clips/not%20an%20id").status_code == 400


def test_selections_round_trip_into_export(client, indexed):
    pair = [clip_id(3), clip_id(4)]          # 4 is rejected by the view: a selection is exported as chosen
    r = client.post("/api/selections", json={"name": "pair", "clip_ids": pair})
    assert r.status_code == 200 and r.json()["count"] == 2 and "--selection pair" in r.json()["export"]
    assert read_selection(indexed, "pair") == pair
    assert {"name": "pair", "count": 2} in client.get("/api/selections").json()
    assert client.get("/api/selections/pair").json()["clip_ids"] == pair
    assert sorted(select(indexed, selection="pair").clips.column("clip_id").to_pylist()) == sorted(pair)
    assert ids_of(client.get("/api/clips", params={"selection": "pair"}).json()) == sorted(pair)

    # every clip of a result set, then one more added to it
    r = client.post("/api/selections", json={"name": "long", "results": {"where": "duration_s > 5"}})
    want = sorted(clip_id(i) for i, c in enumerate(CLIPS) if c[1] > 5)
    assert r.json()["count"] == len(want) and sorted(read_selection(indexed, "long")) == want
    r = client.post("/api/selections", json={"name": "long", "clip_ids": [clip_id(0)], "append": True})
    assert r.json() == {**r.json(), "count": len(want) + 1, "added": 1}
    hits = client.post("/api/selections", json={"name": "dogs", "results": {"q": "a dog on a beach"}}).json()
    assert hits["count"] == len(CLIPS)     # a search selects its hits (all 11, fewer than MAX_HITS)
    assert sorted(select(indexed, selection="long").clips.column("clip_id").to_pylist()) == sorted(want + [clip_id(0)])

    for bad in ({"name": "../x", "clip_ids": pair}, {"name": "a/b", "clip_ids": pair}, {"name": "x", "clip_ids": []},
                {"name": "x", "clip_ids": ["ffffffffffffffff"]}, {"name": "x"},
                {"name": "x", "results": {"where": "duration_s >"}},
                {"name": "x", "results": {"q": "a dog", "selection": "pair"}}):   # was: every hit, not the pair's
        r = client.post("/api/selections", json=bad)
        assert r.status_code == 400, (bad, r.json())
    assert client.get("/api/selections/nope").status_code == 404
    assert client.get("/api/selections/..%2Fx").status_code in (400, 404)


def test_a_library_without_captions_or_index_says_what_to_run(tmp_path):
    """Each notice's command can be pasted into a shell as it is, also where the library's path has
    a space and a quote in it."""
    root = build_library(tmp_path / "my clips' copy", captions=False, view=False)

    def commands(text: str) -> list[list[str]]:
        return [shlex.split(c) for c in text.split(" && ")]

    with TestClient(create_app(root, caption_only_config())) as client:
        s = client.get("/api/status").json()
        runs = [words for n in s["notices"] for words in commands(n["run"])]
        assert ["recap", "caption", str(root), "--backend", "signals"] in runs
        assert ["recap", "filter", str(root)] in runs and ["recap", "index", str(root)] in runs
        assert s["clips"] == len(CLIPS) and s["search_modes"]["caption"] is False
        page = client.get("/api/clips").json()
        assert page["total"] == len(CLIPS) and page["items"][0].get("caption") is None     # browsing works
        r = client.get("/api/search", params={"q": "dog"})
        said = [shlex.split(c) for c in r.json()["detail"].split("`")[1::2]]
        assert r.status_code == 400 and ["recap", "caption", str(root), "--model", "HF_ID_OR_FOLDER"] in said, said
        write_captions(root, {clip_id(i): c[0] for i, c in enumerate(CLIPS)})
        s = client.get("/api/status").json()
        assert [words for n in s["notices"] for words in commands(n["run"]) if "index" in words] == [
            ["recap", "index", str(root)]]
        r = client.get("/api/search", params={"q": "dog"})
        assert r.status_code == 400 and ["recap", "index", str(root)] in [
            shlex.split(c) for c in r.json()["detail"].split("`")[1::2]]
        assert client.get("/api/clips").json()["items"][0]["caption"]      # the new captions are read


def test_an_empty_library_and_a_running_ingest(tmp_path):
    root = tmp_path / "lib"
    writer = Library(root, write=True)          # an ingest holding the writer lock
    try:
        with TestClient(create_app(root, caption_only_config())) as client:
            s = client.get("/api/status").json()
            assert s["clips"] == 0 and "recap ingest" in s["notices"][0]["run"]
            assert client.get("/api/clips").json() == {**client.get("/api/clips").json(), "total": 0, "items": []}
            writer.commit({"videos": [{"video_id": VIDEO_REF, "uri": "/x.mp4", "ingested_at": utcnow()}],
                           "clips": [{"clip_id": "c1", "video_id": VIDEO_REF, "shot_index": 0, "clip_index": 0,
                                      "start_frame": 0, "end_frame": 25, "n_frames": 25, "start_s": 0.0,
                                      "end_s": 1.0, "duration_s": 1.0, "fps": 25.0, "width": 8, "height": 8,
                                      "clip_mode": "reference"}]})
            # a batch whose commit marker is not written yet is not seen
            (root / "clips" / "part-99999999T999999.999999-inflight.parquet").write_bytes(b"not yet")
            assert ids_of(client.get("/api/clips").json()) == ["c1"]
            assert client.get("/api/status").json()["clips"] == 1
    finally:
        writer.close()


def test_only_the_names_it_answers_to_on_loopback(indexed):
    app = create_app(indexed, caption_only_config(), allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/api/status").status_code == 200
        assert client.get("/api/status", headers={"Host": "evil.example"}).status_code == 400   # DNS rebinding
        r = client.get("/")
        assert r.status_code == 200 and "<script src=\"/static/app.js\">" in r.text
        assert r.headers["x-content-type-options"] == "nosniff"
        assert client.get("/stats").status_code == 200 and client.get("/static/app.css").status_code == 200
        assert "/api/clips/{clip_id}/media" in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200


def test_fields_videos_and_the_report_page(client, indexed):
    f = client.get("/api/fields").json()
    assert f["duration_s"] == {"kind": "number", "values": None, "measured": len(CLIPS)}
    assert f["camera_motion"]["values"][:2] == ["static", "pan_left"] and f["duplicate"]["kind"] == "bool"
    assert f["aesthetic_score"]["measured"] == 0 and "_row" not in f and "reject_reasons" not in f
    assert f["duplicate_of"]["measured"] == f["duplicate"]["measured"] == len(CLIPS)   # judged, not duplicates
    v = client.get("/api/videos").json()
    assert v["total"] == 2 and [x["clips"] for x in v["items"]] == [9, 2]
    client.post("/api/report")
    client.app.state.report.wait(300)
    info = client.get("/api/report").json()
    assert info["state"] == "ready", info
    assert "recap library report" in client.get(info["url"]).text
    png = client.get("/report/pass_rate.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert (indexed / ".ui" / "report" / "index.html").is_file()


def test_a_damaged_selection_file_does_not_hide_the_others(client, indexed):
    """One cut-off file in LIB/selections/ made GET /api/selections a 500: no selection listed."""
    client.post("/api/selections", json={"name": "fine", "clip_ids": [clip_id(3)]})
    (indexed / "selections" / "cutoff.parquet").write_bytes(b"PAR1 not a whole file")
    try:
        listed = {s["name"]: s for s in client.get("/api/selections").json()}
        assert listed["fine"]["count"] == 1
        assert listed["cutoff"]["count"] is None and "cutoff.parquet" in listed["cutoff"]["error"]
    finally:
        (indexed / "selections" / "cutoff.parquet").unlink()


def test_a_resaved_selection_shows_its_new_clips(client):
    client.post("/api/selections", json={"name": "again", "clip_ids": [clip_id(1)]})
    assert ids_of(client.get("/api/clips", params={"selection": "again"}).json()) == [clip_id(1)]
    client.post("/api/selections", json={"name": "again", "clip_ids": [clip_id(2)]})
    assert ids_of(client.get("/api/clips", params={"selection": "again"}).json()) == [clip_id(2)]
    page = client.get("/api/clips", params={"selection": "again", "sort": "source"}).json()
    assert ids_of(page) == [clip_id(2)]


def test_concurrent_appends_to_one_selection_lose_no_clip(indexed):
    """Saves run in the server's thread pool: an append read the selection and wrote it back
    unlocked, so of 11 clips added at once, one at a time, only a few stayed."""
    def add(url: str, cid: str) -> None:
        body = json.dumps({"name": "race", "clip_ids": [cid], "append": True}).encode()
        req = urllib.request.Request(f"{url}/api/selections", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200

    with serving(indexed) as url:
        threads = [threading.Thread(target=add, args=(url, clip_id(i))) for i in range(len(CLIPS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(read_selection(indexed, "race")) == sorted(clip_id(i) for i in range(len(CLIPS)))
