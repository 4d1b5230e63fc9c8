"""SOURCE expansion, the staging cache for remote videos, and content hashes."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest.config import IngestConfig, SourcesConfig
from pipeline.ingest.job import plan_ingest
from pipeline.ingest.sources import Source, SourceError, StagingCache, content_hash, expand_sources, local_file_problem

ROOT = Path(__file__).resolve().parents[1]
CFG = SourcesConfig()


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ["b.mp4", "a.MKV", "sub/c.webm", "sub/deeper/d.mov", "notes.txt", "sub/cover.jpg",
                 "sub/._c.webm", ".hidden/e.mp4"]:
        _touch(tmp_path / "videos" / name)
    return tmp_path / "videos"


def _uris(sources: list[Source]) -> list[str]:
    return [s.uri for s in sources]


# --- expansion -------------------------------------------------------------------------------


def test_directory_is_recursive_filtered_and_sorted(tree: Path):
    sources = expand_sources([str(tree)], CFG)
    assert _uris(sources) == [str(tree / p) for p in ["a.MKV", "b.mp4", "sub/c.webm", "sub/deeper/d.mov"]]
    assert not any(s.remote for s in sources)


def test_a_walk_or_glob_lists_video_names_that_are_not_regular_files(tree: Path):
    """A broken link (an unmounted disk) or a FIFO named like a video is listed, to become its
    source's error row, not dropped: a folder of broken links said "no video files"."""
    (tree / "gone.mp4").symlink_to("/mnt/unmounted/gone.mp4")
    os.mkfifo(tree / "pipe.webm")
    (tree / "folder.mp4").mkdir()
    listed = _uris(expand_sources([str(tree)], CFG))
    assert str(tree / "gone.mp4") in listed and str(tree / "pipe.webm") in listed
    assert str(tree / "folder.mp4") not in listed
    assert _uris(expand_sources([str(tree / "*.mp4")], CFG)) == [str(tree / "b.mp4"), str(tree / "gone.mp4")]


def test_file_arguments_become_absolute(tree: Path, monkeypatch):
    monkeypatch.chdir(tree)
    assert expand_sources(["b.mp4", "./sub/c.webm"], CFG) == [
        Source(str(tree / "b.mp4"), False), Source(str(tree / "sub/c.webm"), False)]


def test_globs_with_double_star(tree: Path):
    assert _uris(expand_sources([str(tree / "**" / "*.webm")], CFG)) == [str(tree / "sub/c.webm")]
    assert _uris(expand_sources([str(tree / "*")], CFG)) == [str(tree / "a.MKV"), str(tree / "b.mp4")]


def test_user_errors_name_the_argument(tree: Path, tmp_path: Path):
    for arg, words in [(str(tree / "nope.mp4"), "no such file"), (str(tree / "*.avi"), "matches no video"),
                       (str(tmp_path / "empty_dir"), "no video files")]:
        (tmp_path / "empty_dir").mkdir(exist_ok=True)
        with pytest.raises(SourceError) as err:
            expand_sources([str(tree / "b.mp4"), arg], CFG)
        assert arg in str(err.value) and words in str(err.value)
        assert err.value.kind == "bad_argument"


def test_extensions_come_from_config(tree: Path):
    only_mp4 = SourcesConfig(extensions=[".mp4"])
    assert _uris(expand_sources([str(tree)], only_mp4)) == [str(tree / "b.mp4")]


def test_duplicates_are_dropped_keeping_order(tree: Path):
    sources = expand_sources([str(tree / "sub/c.webm"), str(tree), str(tree / "b.mp4")], CFG)
    assert _uris(sources) == [str(tree / p) for p in ["sub/c.webm", "a.MKV", "b.mp4", "sub/deeper/d.mov"]]


def test_urls_pass_through_as_remote(tree: Path):
    sources = expand_sources(["s3://bucket/raw/v1.mp4", "https://example.com/v.webm?sig=1",
                              f"file://{tree}/b.mp4"], CFG)
    assert sources == [Source("s3://bucket/raw/v1.mp4", True), Source("https://example.com/v.webm?sig=1", True),
                       Source(str(tree / "b.mp4"), False)]


def test_remote_glob_is_listed(tmp_path: Path):
    fs = fsspec.filesystem("memory")
    for name in ["in/x.mp4", "in/y.webm", "in/z.json"]:
        fs.pipe(f"/recap-test-glob/{name}", b"data")
    try:
        assert _uris(expand_sources(["memory://recap-test-glob/in/*"], CFG)) == [
            "memory:///recap-test-glob/in/x.mp4", "memory:///recap-test-glob/in/y.webm"]
        with pytest.raises(SourceError, match="matches no video"):
            expand_sources(["memory://recap-test-glob/in/*.avi"], CFG)
    finally:
        fs.rm("/recap-test-glob", recursive=True)


# --- manifests -------------------------------------------------------------------------------


def test_txt_manifest(tree: Path, tmp_path: Path):
    manifest = tmp_path / "lists" / "m.txt"
    manifest.parent.mkdir()
    manifest.write_text(f"# my videos\n\n../videos/b.mp4\n  {tree}/sub/c.webm  \n# s3://skipped.mp4\n"
                        "gs://bucket/v.mp4\n")
    assert expand_sources([str(manifest)], CFG) == [
        Source(str(tree / "b.mp4"), False), Source(str(tree / "sub/c.webm"), False),
        Source("gs://bucket/v.mp4", True)]


def test_csv_jsonl_parquet_manifests(tree: Path):
    rows = [{"uri": "b.mp4", "lang": "en"}, {"uri": "s3://b/k.mp4", "lang": "fr"}]
    (tree / "m.csv").write_text("lang,uri\nen,b.mp4\nfr,s3://b/k.mp4\n")
    (tree / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tree / "m.parquet")
    expected = [Source(str(tree / "b.mp4"), False), Source("s3://b/k.mp4", True)]
    for name in ["m.csv", "m.jsonl", "m.parquet"]:
        assert expand_sources([str(tree / name)], CFG) == expected, name


def test_manifest_without_uri_column(tree: Path):
    (tree / "m.csv").write_text("path,lang\nb.mp4,en\n")
    (tree / "m.jsonl").write_text('{"path": "b.mp4"}\n')
    pq.write_table(pa.table({"path": ["b.mp4"]}), tree / "m.parquet")
    for name in ["m.csv", "m.jsonl", "m.parquet"]:
        with pytest.raises(SourceError) as err:
            expand_sources([str(tree / name)], CFG)
        assert str(tree / name) in str(err.value) and "'uri'" in str(err.value), name


def test_empty_manifest(tree: Path):
    (tree / "m.txt").write_text("# nothing yet\n")
    with pytest.raises(SourceError, match="lists no uris"):
        expand_sources([str(tree / "m.txt")], CFG)


def test_a_jsonl_manifest_error_names_its_line(tree: Path):
    # json's own message said "line 1" (of the one line it was given) whatever the line
    (tree / "m.jsonl").write_text('{"uri": "b.mp4"}\n\n{"uri": "a.MKV",}\n')
    with pytest.raises(SourceError, match="line 3 is not JSON"):
        expand_sources([str(tree / "m.jsonl")], CFG)
    # lines end at \n only: a U+2028 (or \x85) inside a name is part of it, as JSON Lines says
    _touch(tree / "odd\u2028name\x85.mp4")
    (tree / "m.jsonl").write_text('{"uri": "odd\u2028name\x85.mp4"}\r\n{"uri": "b.mp4"}\n', encoding="utf-8")
    assert _uris(expand_sources([str(tree / "m.jsonl")], CFG)) == [str(tree / "odd\u2028name\x85.mp4"),
                                                                   str(tree / "b.mp4")]


def test_parquet_manifest_of_binary_uris(tree: Path):
    # a string column written without its UTF-8 annotation reads back as bytes, not "b'b.mp4'"
    pq.write_table(pa.table({"uri": pa.array([b"b.mp4", None], pa.binary())}), tree / "m.parquet")
    assert _uris(expand_sources([str(tree / "m.parquet")], CFG)) == [str(tree / "b.mp4")]


def test_a_nul_byte_in_a_manifest_entry_is_that_sources_error(tree: Path, tmp_path: Path):
    # was a traceback in `--dry-run`, and in a run a `failed` row (recap's fault) retried every time
    (tree / "m.csv").write_text("uri\nb.mp4\nc\0.mp4\n")
    sources = expand_sources([str(tree / "m.csv")], CFG)
    assert _uris(sources) == [str(tree / "b.mp4"), str(tree / "c\0.mp4")]
    assert local_file_problem(sources[1].uri)[0] == "not_found"
    assert "NUL byte" in local_file_problem(sources[1].uri)[1]
    assert plan_ingest([str(tree / "m.csv")], tmp_path / "lib", IngestConfig()).sources == 2


def test_manifest_written_relative_to_the_current_directory_is_refused(tree: Path, monkeypatch):
    """`find videos -name '*.mp4' > videos/list.txt`: its paths name files from here, not from its
    folder, where they would all fail as "no such file": refused, saying how to write them."""
    monkeypatch.chdir(tree.parent)
    (tree / "list.txt").write_text("videos/b.mp4\nvideos/sub/c.webm\n")
    with pytest.raises(SourceError) as err:
        expand_sources(["videos/list.txt"], CFG)
    assert "read from its own folder" in str(err.value) and "videos/b.mp4" in str(err.value)
    # one entry that exists from the manifest's folder: the others are its own missing videos
    (tree / "list.txt").write_text("videos/b.mp4\nb.mp4\n")
    assert _uris(expand_sources(["videos/list.txt"], CFG)) == [str(tree / "videos/b.mp4"), str(tree / "b.mp4")]
    # run from the manifest's own folder the two readings agree
    monkeypatch.chdir(tree)
    (tree / "list.txt").write_text("nope.mp4\n")
    assert _uris(expand_sources(["list.txt"], CFG)) == [str(tree / "nope.mp4")]


# --- content hash ----------------------------------------------------------------------------


def test_content_hash_follows_bytes_not_names(tmp_path: Path):
    data = os.urandom(3 * (1 << 20) + 123)          # several read chunks
    a = _touch(tmp_path / "a.mp4", data)
    b = _touch(tmp_path / "copy" / "renamed.mkv", data)
    c = _touch(tmp_path / "c.mp4", data[:-1] + bytes([data[-1] ^ 1]))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)
    assert len(content_hash(a)) == 32 and int(content_hash(a), 16) >= 0


# --- staging cache ---------------------------------------------------------------------------


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"/recap-test-{os.getpid()}-{id(fs)}"
    yield fs, root
    fs.rm(root, recursive=True)


def test_local_sources_are_not_copied(tmp_path: Path):
    video = _touch(tmp_path / "v.mp4", b"abc")
    cache = StagingCache(tmp_path / "cache", max_bytes=10)
    assert cache.fetch(str(video)) == video
    assert cache.fetch(f"file://{video}") == video
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_stages_once_and_evicts_least_recently_used(tmp_path: Path, memfs):
    fs, root = memfs
    for name in "abcd":
        fs.pipe(f"{root}/{name}.mp4", name.encode() * 1000)
    cache = StagingCache(tmp_path / "cache", max_bytes=2500)
    uri = {n: f"memory://{root}/{n}.mp4" for n in "abcd"}

    pa_ = cache.fetch(uri["a"])
    assert pa_.read_bytes() == b"a" * 1000 and pa_.parent == tmp_path / "cache" and pa_.suffix == ".mp4"
    inode = pa_.stat().st_ino
    assert cache.fetch(uri["a"]) == pa_ and pa_.stat().st_ino == inode      # a hit, no new download
    cache.release(uri["a"])
    cache.fetch(uri["b"]); cache.release(uri["b"])
    os.utime(pa_, (pa_.stat().st_atime + 100, pa_.stat().st_mtime))        # 'a' used more recently
    cache.fetch(uri["c"]); cache.release(uri["c"])                          # 3000 bytes > 2500: evict 'b'
    assert sorted(p.read_bytes()[:1] for p in (tmp_path / "cache").iterdir()) == [b"a", b"c"]
    assert cache.size_bytes() <= 2500


def test_files_in_use_are_never_evicted(tmp_path: Path, memfs):
    fs, root = memfs
    for name in "abc":
        fs.pipe(f"{root}/{name}.mp4", name.encode() * 1000)
    cache = StagingCache(tmp_path / "cache", max_bytes=1500)
    held = [cache.fetch(f"memory://{root}/{n}.mp4") for n in "abc"]      # all in use, over budget
    assert all(p.exists() for p in held)
    cache.close()
    cache.evict()
    assert cache.size_bytes() <= 1500


def test_file_in_use_by_another_process_is_kept(tmp_path: Path, memfs):
    fs, root = memfs
    fs.pipe(f"{root}/big.mp4", b"z" * 3000)
    cache = StagingCache(tmp_path / "cache", max_bytes=3000)
    held = cache.fetch(f"memory://{root}/big.mp4")          # the other process's cache holds only 1000
    code = ("import sys; from pipeline.ingest.sources import StagingCache\n"
            "c = StagingCache(sys.argv[1], 1000); c.evict(); print(c.size_bytes())\n")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=True)
    assert held.exists() and other.stdout.strip() == "3000"
    cache.release(f"memory://{root}/big.mp4")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    assert not held.exists()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; everything under /private/ is forbidden."""

    def send_head(self):
        if self.path.startswith("/private/"):
            self.send_error(403, "Forbidden")
            return None
        return super().send_head()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path: Path):
    served = tmp_path / "served"
    _touch(served / "v.mp4", b"video bytes" * 100)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_fetch_and_its_failures(tmp_path: Path, http_root: str):
    cache = StagingCache(tmp_path / "cache", max_bytes=1 << 20)
    assert cache.fetch(f"{http_root}/v.mp4").read_bytes() == b"video bytes" * 100
    with socket.socket() as s:                      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for uri, kind in [(f"{http_root}/missing.mp4", "not_found"), (f"{http_root}/private/v.mp4", "permission_denied"),
                      (f"http://127.0.0.1:{closed}/v.mp4", "unreachable"), ("nosuchscheme://x/v.mp4", "unsupported_url")]:
        with pytest.raises(SourceError) as err:
            cache.fetch(uri)
        assert err.value.kind == kind and uri in str(err.value), str(err.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".part")] == []


# --- hostile sources -------------------------------------------------------------------------


def test_file_type_is_checked_before_any_byte_is_read(tmp_path: Path):
    from pipeline.ingest.sources import local_file_problem

    os.mkfifo(tmp_path / "fifo.mp4")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    _touch(tmp_path / "ok.mp4")
    kinds = {name: (local_file_problem(tmp_path / name) or ("ok",))[0]
             for name in ["fifo.mp4", "dir.mp4", "loop.mp4", "dangling.mp4", "missing.mp4", "ok.mp4"]}
    assert kinds == {"fifo.mp4": "unsafe_input", "dir.mp4": "not_a_video", "loop.mp4": "not_found",
                     "dangling.mp4": "not_found", "missing.mp4": "not_found", "ok.mp4": "ok"}
    assert local_file_problem("/dev/zero")[0] == "unsafe_input"


def test_content_hash_of_a_fifo_or_device_returns_at_once(tmp_path: Path):
    """Hashing came before any type check, and a FIFO (no writer) or /dev/zero blocked it forever.
    In a child process, so that a regression fails at the timeout instead of hanging the suite."""
    os.mkfifo(tmp_path / "fifo.mp4")
    code = ("import sys\nfrom pipeline.ingest.sources import SourceError, content_hash\n"
            "for p in sys.argv[1:]:\n"
            "    try: content_hash(p); print('read', p)\n"
            "    except SourceError as e: print(e.kind)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fifo.mp4"), "/dev/zero"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["unsafe_input", "unsafe_input"], out.stderr


def test_unreadable_directory_says_so(tmp_path: Path):
    """It said 'directory has no video files'. Root reads anything, so the expansion runs in a
    child that drops to user 'nobody' after its imports."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="recap-dir-"))
    try:
        os.chmod(work, 0o755)
        _touch(work / "videos" / "private" / "a.mp4")
        _touch(work / "videos" / "b.mp4")
        os.chmod(work / "videos" / "private", 0o700)
        os.chown(work / "videos", 65534, 65534)
        os.chown(work / "videos" / "b.mp4", 65534, 65534)
        code = ("import os, sys\nfrom pipeline.ingest.config import SourcesConfig\n"
                "from pipeline.ingest.sources import SourceError, expand_sources\n"
                "os.geteuid() == 0 and (os.setgroups([]), os.setgid(65534), os.setuid(65534))\n"
                "for arg in sys.argv[1:]:\n"
                "    try: print(len(expand_sources([arg], SourcesConfig())))\n"
                "    except SourceError as e: print(e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(work / "videos"), str(work / "videos" / "private")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = out.stdout.splitlines()
        assert len(lines) == 2, out.stderr
        for line in lines:     # the folder inside is named: not skipped, not "no video files"
            assert "cannot list" in line and f"{work}/videos/private: permission denied" in line, line
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """/endless.mp4: bytes forever, no Content-Length; /sized.mp4: says 50 MB up front."""

    protocol_version = "HTTP/1.0"

    def _head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        if self.path == "/sized.mp4":
            self.send_header("Content-Length", str(50 << 20))
        self.end_headers()

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        self._head()
        try:
            while True:
                self.wfile.write(b"\0" * 65536)
        except OSError:      # the client hung up
            pass

    def log_message(self, *args):
        pass


def test_download_stops_at_the_cache_limit(tmp_path: Path):
    """A response with no Content-Length streamed on past sources.cache_max_gb (an endless one
    would fill the disk); the limit now holds while streaming."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cache = StagingCache(tmp_path / "cache", max_bytes=3 << 20)
        for name in ("endless.mp4", "sized.mp4"):
            with pytest.raises(SourceError) as err:
                cache.fetch(f"{base}/{name}")
            assert err.value.kind == "too_large" and f"{base}/{name}" in str(err.value)
            assert "sources.cache_max_gb" in str(err.value)
        assert list((tmp_path / "cache").iterdir()) == []       # no partial file left behind
    finally:
        server.shutdown()
        server.server_close()
