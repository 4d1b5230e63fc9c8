"""What `recap serve` serves: clip files with HTTP range requests (so a player can seek), and nothing
outside the library: encoded `../`, absolute paths and symlinks that lead out are refused, sent as
raw requests to a real server (an HTTP client would tidy the paths before sending them)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import av
import pytest
from fastapi.testclient import TestClient

from pipeline.library import Library
from pipeline.serve import create_app
from pipeline.serve.api import MAX_SELECTION
from pipeline.serve.app import MAX_BODY
from tests.index_fixtures import clip_id
from tests.test_serve_api import REFERENCE, REMUX, build_library, caption_only_config, serving

SECRET = "TOP-SECRET-7f3a"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("safety")
    (base / "secret.txt").write_text(SECRET)
    return build_library(base)


@pytest.fixture(scope="module")
def client(library):
    with TestClient(create_app(library, caption_only_config())) as c:
        yield c


def file_of(root: Path, i: int) -> Path:
    t = Library(root).clips(["clip_id", "path"]).to_pylist()
    return Library(root).media_path(next(r["path"] for r in t if r["clip_id"] == clip_id(i)))


def test_range_requests_answer_206_with_content_range(client, library):
    data = file_of(library, 0).read_bytes()
    url = f"/api/clips/{clip_id(0)}/media"
    full = client.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "video/mp4"
    for header, (lo, hi) in {"bytes=0-99": (0, 99), "bytes=1000-": (1000, len(data) - 1),
                             "bytes=-50": (len(data) - 50, len(data) - 1),
                             f"bytes={len(data) // 2}-{len(data) // 2 + 9}": (len(data) // 2, len(data) // 2 + 9)}.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {lo}-{hi}/{len(data)}"
        assert r.content == data[lo:hi + 1] and int(r.headers["content-length"]) == hi - lo + 1
    r = client.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"


def test_seeking_reads_the_file_from_the_middle(client, library):
    """What a player does to seek: the index first, then a range from the middle; the bytes put
    together decode to the frames of the clip."""
    url = f"/api/clips/{clip_id(REMUX)}/media"
    size = int(client.head(url).headers["content-length"])
    parts, pos = [], 0
    while pos < size:                        # small ranges, as a browser streams
        r = client.get(url, headers={"Range": f"bytes={pos}-{min(pos + 4095, size - 1)}"})
        assert r.status_code == 206
        parts.append(r.content)
        pos += len(r.content)
    with av.open(io.BytesIO(b"".join(parts))) as f:
        stream = f.streams.video[0]
        f.seek(int(1.0 / stream.time_base), stream=stream)       # seek to 1 s
        frame = next(f.decode(stream))
        assert frame.time <= 1.0 and sum(1 for _ in f.decode(stream)) > 0
    assert b"".join(parts) == file_of(library, REMUX).read_bytes()


def test_a_reference_clip_is_not_served_but_says_where_it_is(client):
    r = client.get(f"/api/clips/{clip_id(REFERENCE[0])}/media")
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "reference" in detail and "source.mp4" in detail and "not served" in detail
    thumb = client.get(f"/api/clips/{clip_id(REFERENCE[0])}/thumb")     # one decoded frame, as a JPEG
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"


def test_thumbnails_are_jpegs_made_once(client, library):
    r = client.get(f"/api/clips/{clip_id(REMUX)}/thumb")
    assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"
    cached = library / ".ui" / "thumbs" / f"{clip_id(REMUX)}.jpg"
    assert cached.read_bytes() == r.content


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side tidying of `..` or `%2e`)."""
    u = urlparse(base)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


TRAVERSALS = [
    "/static/../../secret.txt", "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt", "/static/..%2f..%2f..%2fsecret.txt",
    "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/report/../../../secret.txt", "/report/%2e%2e/%2e%2e/%2e%2e/secret.txt", "/report/..%2f..%2f..%2fsecret.txt",
    "/report/%2Fetc%2Fpasswd", "/report//etc/passwd", "/report/..%5c..%5c..%5csecret.txt",
    "/report/out.txt", "/report/up/secret.txt",
    "/api/clips/..%2f..%2f..%2fsecret.txt/media", "/api/clips/%2e%2e/media", "/api/clips/..%2Fsecret.txt/thumb",
    "/api/clips/%2Fetc%2Fpasswd/media", "/api/selections/..%2F..%2Fsecret", "/api/clips/..%00/media",
]


def test_paths_out_of_the_library_are_refused(library):
    report = library / ".ui" / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "out.txt").symlink_to(library.parent / "secret.txt")    # symlinks inside that lead out
    (report / "up").symlink_to(library.parent, target_is_directory=True)
    (report / "ok.txt").write_text("inside")
    with serving(library) as base:
        assert raw_get(base, "/static/app.css")[0] == 200
        assert raw_get(base, "/report/ok.txt") == (200, b"inside")       # what is inside is served
        for path in TRAVERSALS:
            status, body = raw_get(base, path)
            assert status in (400, 403, 404, 405), (path, status)
            assert SECRET.encode() not in body and b"root:" not in body, path


def test_a_clip_file_that_is_a_symlink_out_is_refused(tmp_path):
    (tmp_path / "secret.txt").write_text(SECRET)
    root = build_library(tmp_path)
    with TestClient(create_app(root, caption_only_config())) as client:
        assert client.get(f"/api/clips/{clip_id(1)}/media").status_code == 200      # the table is read and kept
        target = file_of(root, 1)
        target.unlink()
        target.symlink_to(tmp_path / "secret.txt")                 # now the clip file leads out
        for what in ("media", "thumb"):
            r = client.get(f"/api/clips/{clip_id(1)}/{what}")
            assert r.status_code == 403 and "outside the library" in r.json()["detail"], what
            assert SECRET not in r.text
        os.symlink(tmp_path / "secret.txt", tmp_path / "lib" / "inside.mp4")
        assert client.get("/api/clips/inside.mp4/media").status_code == 400


def test_a_table_naming_paths_outside_is_refused_whole(tmp_path):
    (tmp_path / "secret.txt").write_text(SECRET)
    root = build_library(tmp_path / "x")
    with Library(root, write=True) as lib:
        lib.commit({"clips": [{"clip_id": "evil", "video_id": "b" * 32, "shot_index": 0, "clip_index": 0,
                               "start_frame": 0, "end_frame": 1, "n_frames": 1, "start_s": 0.0, "end_s": 0.04,
                               "duration_s": 0.04, "fps": 25.0, "width": 8, "height": 8, "clip_mode": "encode",
                               "path": str(tmp_path / "secret.txt")}]})
    with TestClient(create_app(root, caption_only_config())) as client:
        s = client.get("/api/status").json()
        assert s["clips"] == 0 and "outside the library" in s["notices"][0]["text"]
        assert client.get("/api/clips/evil/media").status_code == 404
        assert SECRET not in client.get("/api/clips/evil/media").text



def test_a_copied_library_with_symlinks_in_its_ui_folder_serves_nothing_outside(tmp_path):
    """LIB/.ui came with the library: a report folder linked to another folder was served whole
    under /report (and built into), and a cached thumbnail linked to a file was served as a JPEG."""
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_text(SECRET)
    root = build_library(tmp_path)
    (root / ".ui" / "thumbs").mkdir(parents=True)
    (root / ".ui" / "report").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / ".ui" / "thumbs" / f"{clip_id(0)}.jpg").symlink_to(tmp_path / "secret.txt")
    with TestClient(create_app(root, caption_only_config())) as client:
        assert client.get("/report/secret.txt").status_code == 404
        r = client.get(f"/api/clips/{clip_id(0)}/thumb")
        assert r.status_code == 200 and SECRET not in r.text and r.content[:2] == b"\xff\xd8"
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["secret.txt"]   # nothing written there

    # a thumbnail planted in a library's own .ui folder is replaced by the clip's frame
    shutil.rmtree(root / ".ui")
    (root / ".ui" / "thumbs").mkdir(parents=True)
    (root / ".ui" / "thumbs" / f"{clip_id(0)}.jpg").symlink_to(tmp_path / "secret.txt")
    with TestClient(create_app(root, caption_only_config())) as client:
        r = client.get(f"/api/clips/{clip_id(0)}/thumb")
        assert r.status_code == 200 and SECRET not in r.text and r.content[:2] == b"\xff\xd8"
    assert not (root / ".ui" / "thumbs" / f"{clip_id(0)}.jpg").is_symlink()


def raw_post(base: str, path: str, head: str, body: bytes = b"") -> tuple[int, dict]:
    """POST with headers and body bytes exactly as given; the status and the JSON answer."""
    u = urlparse(base)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{head}\r\n".encode())
        try:
            s.sendall(body)
        except OSError:       # the server answered and closed without reading the rest
            pass
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_bytes, _, answer = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(answer)


def test_a_request_body_over_the_limit_is_refused_unread(library):
    """A POST could send a body of any size and the server read it all into memory: one declaring
    more than the limit is refused before its body is sent (the server waits for none of it), a
    chunked one once it passes the limit; bodies up to the limit still work."""
    with serving(library) as base:
        status, said = raw_post(base, "/api/selections", f"Content-Length: {100 * MAX_BODY}\r\n")
        assert status == 413 and "too large" in said["detail"] and str(MAX_BODY) in said["detail"]
    with serving(library, max_body=1000) as base:
        chunk = b'{"name": "big", "clip_ids": [' + b'"0123456789", ' * 60
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2)) + b"0\r\n\r\n"
        status, said = raw_post(base, "/api/selections", "Transfer-Encoding: chunked\r\n", chunked)
        assert status == 413 and "1000 bytes" in said["detail"]
        small = json.dumps({"name": "small", "clip_ids": [clip_id(0)]}).encode()
        for head, body in ((f"Content-Length: {len(small)}\r\n", small),
                           ("Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))):
            status, said = raw_post(base, "/api/selections", head, body)
            assert status == 200 and said["count"] == 1, said


def test_the_body_limit_holds_the_largest_selection_a_save_takes():
    ids = [f"{i:020x}" for i in range(MAX_SELECTION)]       # clip ids are 20 hex digits
    assert len(json.dumps({"name": "all", "clip_ids": ids, "append": True})) < MAX_BODY
