"""Turn command-line SOURCE arguments into a list of videos, stage remote ones locally, hash content.

A SOURCE is a file, a directory (searched recursively), a glob (`**` allowed), a manifest
(`.txt`: one uri per line, `#` comments; `.csv`/`.jsonl`/`.parquet`: a `uri` column) or an fsspec
URL (`s3://`, `gs://`, `https://`, ...). Errors here are the user's to fix before any work starts,
so they raise `SourceError` at once; a bad *video* (unreadable, truncated, ...) is found later, by
probing, and becomes an errors row instead.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import functools
import glob as globlib
import hashlib
import itertools
import json
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, unquote, urlparse

from pipeline.ingest.config import SourcesConfig
from pipeline.ingest.result import NoSpace
from pipeline.library.layout import is_library
from trainer.diskfull import NO_SPACE_ERRNOS

MANIFEST_SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")
_HASH_CHUNK = 1 << 20


class SourceError(Exception):
    """A source that cannot be used; the message names it and says why.

    `kind`: "bad_argument" (a SOURCE argument or manifest the user must fix), or for one source "not_found", "permission_denied",
    "not_a_video" (a folder), "unsafe_input" (a pipe or device: reading it could block forever),
    "unreachable", "unsupported_url", "too_large" (bigger than the staging cache), "fetch_failed"."""

    def __init__(self, message: str, kind: str = "bad_argument") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Source:
    uri: str        # absolute local path, or a remote URL exactly as given
    remote: bool    # True: must be staged through `StagingCache` before reading


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def expand_sources(args: list[str], cfg: SourcesConfig) -> list[Source]:
    """Every video named by `args`, in order, each uri once."""
    extensions = {e.lower() for e in cfg.extensions}
    out: list[Source] = []
    for arg in args:
        out.extend(_expand_one(arg, extensions))
    seen: set[str] = set()
    unique = []
    for s in out:
        if s.uri not in seen:
            seen.add(s.uri)
            unique.append(s)
    return unique


def _expand_one(arg: str, extensions: set[str]) -> list[Source]:
    if is_url(arg):
        if _parse_url(arg).scheme.lower() != "file":
            return _expand_remote(arg, extensions)
        arg = _file_url_path(arg)
    path = Path(arg).expanduser()
    if path.is_dir():
        found, libraries = _walk_videos(arg, path, extensions)
        if not found:
            hint = f"; skipped the recap library {libraries[0]}" if libraries else ""
            raise SourceError(f"{arg}: directory has no video files (looked for {_ext_list(extensions)}{hint})")
        return [_local(p) for p in found]
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return read_manifest(path)
        return [_local(path)]
    if _GLOB_CHARS.search(arg):
        found = sorted(Path(p) for p in globlib.glob(os.path.expanduser(arg), recursive=True))
        found = [p for p in found if p.suffix.lower() in extensions and not p.is_dir()
                 and _library_of(p.resolve().parent) is None]
        if not found:
            raise SourceError(f"{arg}: pattern matches no video files (looked for {_ext_list(extensions)})")
        return [_local(p) for p in found]
    problem = local_file_problem(path)
    if problem is not None:
        raise SourceError(f"{arg}: {problem[1]}")
    raise SourceError(f"{arg}: not a regular file, directory or manifest")


def _walk_videos(arg: str, root: Path, extensions: set[str]) -> tuple[list[Path], list[Path]]:
    """Video files under `root`, sorted, and the recap libraries skipped on the way. Hidden
    files and folders are skipped, as a glob does (macOS "._x.mp4" sidecars, our own ".part"
    files), and so are libraries (`recap ingest . --out lib`: its clips are not new videos). A
    folder that cannot be listed is an error naming it: skipping it silently would report "no
    video files", or lose its videos. So is a video name that is not a regular file (a broken
    link to an unmounted disk, a FIFO): it is listed, and becomes its source's error row."""
    def unreadable(exc: OSError) -> None:
        reason = "permission denied" if isinstance(exc, PermissionError) else _reason(exc)
        raise SourceError(f"{arg}: cannot list {exc.filename}: {reason}")

    found: list[Path] = []
    inside = _library_of(root.resolve())
    if inside is not None:
        return found, [inside]
    libraries = []
    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        if is_library(folder):
            dirs[:] = []
            libraries.append(Path(folder))
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            p = Path(folder) / name
            if not name.startswith(".") and p.suffix.lower() in extensions and not p.is_dir():
                found.append(p)
    return sorted(found), libraries


@functools.lru_cache(maxsize=4096)
def _library_of(folder: Path) -> Path | None:
    """The recap library `folder` (absolute) lies in, if any: what a directory or glob source
    skips, since a library's media/ holds clips cut from videos already ingested."""
    return next((f for f in (folder, *folder.parents) if is_library(f)), None)


def local_file_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """(kind, reason) when `path` is not a regular file that can be read, else None. Only the
    file's type is looked at, never its bytes: a FIFO or a device would block or never end."""
    try:
        st = os.stat(path)
    except ValueError:    # a manifest entry holding a NUL byte: no file can have that name
        return "not_found", "the name holds a NUL byte (\\x00), which no file name can"
    except FileNotFoundError:
        if os.path.islink(path):
            return "not_found", f"broken symbolic link (to {os.readlink(path)}): no such file"
        return "not_found", "no such file"
    except PermissionError:
        return "permission_denied", "permission denied (a folder on its path cannot be entered)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "not_found", "symbolic link loop: it never reaches a file"
        if exc.errno == errno.ENAMETOOLONG:
            return "not_found", "file name too long"
        return "not_found", _reason(exc)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "not_a_video", "a directory, not a video file"
    what = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    return "unsafe_input", f"{what}, not a regular file: reading it could block or never end"


def _expand_remote(url: str, extensions: set[str]) -> list[Source]:
    """A plain URL is passed through untouched (no network); a remote glob or folder (`.../`) is listed."""
    is_glob = bool(_GLOB_CHARS.search(_parse_url(url).path))
    if not is_glob and not url.endswith("/"):
        return [Source(url, remote=True)]

    try:
        import fsspec  # lazy: only remote sources need it (~30 ms of every worker's start otherwise)

        fs, _, _ = fsspec.core.get_fs_token_paths(url)
        names = fs.glob(url) if is_glob else fs.find(url)
    except Exception as exc:  # any backend failure: missing package, credentials, network
        kind, reason = _fetch_failure(exc)
        raise SourceError(f"{url}: cannot list: {reason}", kind) from exc
    protocol = _parse_url(url).scheme
    found = sorted(n for n in names if Path(n).suffix.lower() in extensions)
    if not found:
        raise SourceError(f"{url}: matches no video files (looked for {_ext_list(extensions)})")
    return [Source(n if is_url(n) else f"{protocol}://{n}", remote=True) for n in found]


def read_manifest(path: Path) -> list[Source]:
    """The uris a manifest lists; relative paths are taken from the manifest's folder.

    Entries are not checked for existence: a missing file in a long manifest is one failed video
    (an errors row), not a reason to refuse the whole job."""
    suffix = path.suffix.lower()
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8", Notepad) is not part of the first entry
    try:
        if suffix == ".txt":
            lines = (ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines())
            uris = [ln for ln in lines if ln and not ln.startswith("#")]
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                _require_uri_column(path, reader.fieldnames or [])
                uris = [row["uri"] for row in reader]
        elif suffix == ".jsonl":
            uris = []
            try:
                for number, row in json_lines(path):
                    if not isinstance(row, dict) or "uri" not in row:
                        raise SourceError(f"{path}: line {number} has no 'uri' field")
                    uris.append(row["uri"])
            except ValueError as exc:
                raise SourceError(str(exc)) from None
        else:
            # lazy: pyarrow is for Parquet manifests only; the ingest child reads none
            import pyarrow.parquet as pq

            with path.open("rb") as f:   # a Python file: Arrow's own would need a UTF-8 path
                _require_uri_column(path, pq.read_schema(f).names)
                uris = pq.read_table(f, columns=["uri"]).column("uri").to_pylist()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: cannot read manifest: {_reason(exc)}") from exc
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises its own types for a damaged parquet file
        raise SourceError(f"{path}: cannot read manifest: {_reason(exc)}") from exc
    # a Parquet string column written as plain binary (no UTF-8 annotation) gives bytes, not "b'...'"
    uris = [os.fsdecode(u) if isinstance(u, bytes) else u for u in uris]
    uris = [str(u).strip() for u in uris if u is not None and str(u).strip()]
    if not uris:
        raise SourceError(f"{path}: manifest lists no uris")
    _check_relative_paths(path, uris)
    return [manifest_entry(path.parent, u) for u in uris]


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each line of a JSON Lines file that is not blank (UTF-8, a byte-order
    mark allowed). Lines end at \n only: splitlines() would also cut at a U+2028 inside a name.
    ValueError names the line that is not JSON (json's own message says "line 1" of the one line
    it was given), or says the file is not UTF-8."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 JSON lines ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg}, column {e.colno})") from None
        yield number, value


def _check_relative_paths(manifest: Path, uris: list[str], sample: int = 100) -> None:
    """Refuses a manifest written with paths relative to the current directory rather than to its
    own folder (`find vids -name '*.mp4' > vids/list.txt`): every video would fail as "no such
    file". Looks at the first `sample` relative entries only, so a long manifest costs no more
    than that: when none exists from the manifest's folder but some do from here, say so."""
    folder = manifest.parent
    named = (u for u in uris if not os.path.isabs(u) and not u.startswith("~") and not is_url(u))
    relative = [Path(u) for u in itertools.islice(named, sample)]
    try:
        if not relative or folder.resolve() == Path.cwd().resolve():
            return
    except OSError:   # the current directory was removed: nothing is relative to it
        return
    if any(os.path.lexists(folder / p) for p in relative):
        return
    here = [p for p in relative if os.path.lexists(p)]
    if here:
        raise SourceError(f"{manifest}: relative paths in a manifest are read from its own folder ({folder}), "
                          f"where none of its first {len(relative)} exist; they do exist relative to the current "
                          f"directory (e.g. {here[0]}): write them relative to {folder} or as absolute paths")


def _require_uri_column(path: Path, columns: list[str]) -> None:
    if "uri" not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise SourceError(f"{path}: manifest needs a 'uri' column (found {found})")


def manifest_entry(folder: Path, uri: str) -> Source:
    if is_url(uri):
        try:
            if _parse_url(uri).scheme.lower() == "file":
                return _local(Path(_file_url_path(uri)))
        except SourceError:
            pass      # one bad line of a long manifest: that source's error row (at fetch), not the job's end
        return Source(uri, remote=True)
    path = Path(uri).expanduser()
    return _local(path if path.is_absolute() else folder / path)


def _local(path: Path) -> Source:
    return Source(os.path.abspath(path), remote=False)


def _file_url_path(url: str) -> str:
    parsed = _parse_url(url)
    return unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else unquote(parsed.path)


def _parse_url(url: str) -> ParseResult:
    """`urlparse`, with what it refuses (an unclosed IPv6 bracket, a bad port) as a SourceError."""
    try:
        parsed = urlparse(url)
        parsed.port     # parsed lazily: a port that is not a number raises here
    except ValueError as exc:
        raise SourceError(f"{url}: not a valid URL ({exc})", "unsupported_url") from None
    return parsed


def _ext_list(extensions: set[str]) -> str:
    return " ".join(sorted(extensions))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if exc.__class__.__name__ not in text else text


# --------------------------------------------------------------------------------------------
# Staging cache for remote sources


class StagingCache:
    """Local copies of remote videos in `dir`, at most about `max_bytes` of them.

    Safe to share between processes on one machine (several Ray workers): a download goes to a
    private temp name and is published with an atomic hard link, so a reader never sees a
    partial file; a file in use is held with a shared `flock`, and eviction only removes files
    it can lock exclusively, so a file in use is never evicted (and a crashed holder's lock
    goes away with it). Least-recently-used files go first; each fetch refreshes the access
    time explicitly (many filesystems are mounted `noatime`).
    """

    _PART = ".part"

    def __init__(self, dir: str | os.PathLike, max_bytes: int) -> None:
        self.dir = Path(dir)
        self.max_bytes = int(max_bytes)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}   # uri -> fd holding a shared lock

    def path_for(self, uri: str) -> Path:
        digest = hashlib.blake2b(uri.encode(), digest_size=16).hexdigest()
        suffix = Path(_parse_url(uri).path).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
        return self.dir / f"{digest}{suffix}"

    def fetch(self, uri: str) -> Path:
        """A local path holding `uri`'s bytes, in use until `release(uri)`.

        Local paths (and file:// URLs) are returned as they are, without a copy."""
        if not is_url(uri) or _parse_url(uri).scheme.lower() == "file":
            return Path(_file_url_path(uri) if is_url(uri) else uri)
        if uri in self._held:
            return self.path_for(uri)
        path = self.path_for(uri)
        for _ in range(5):
            fd = _open_locked_shared(path)
            if fd is None:
                self._download(uri, path)
                fd = _open_locked_shared(path)
            if fd is not None:   # None only if another process evicted it in between
                self._held[uri] = fd
                os.utime(path, (time.time(), os.stat(path).st_mtime))
                self.evict()
                return path
        raise SourceError(f"{uri}: staged copy kept disappearing (cache too small or contended?)",
                          "fetch_failed")

    def release(self, uri: str) -> None:
        """The caller is done with `uri`'s staged copy: it may be evicted from now on."""
        fd = self._held.pop(uri, None)
        if fd is not None:
            os.close(fd)   # closing drops the shared lock

    def close(self) -> None:
        for uri in list(self._held):
            self.release(uri)

    def __enter__(self) -> StagingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._entries())

    def evict(self) -> None:
        """Remove least-recently-used files not in use until the cache fits `max_bytes`."""
        entries = []
        for p in self._entries():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_atime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if _remove_if_unused(p):
                total -= size
        self._remove_stale_parts()

    def _entries(self) -> list[Path]:
        return [p for p in self.dir.iterdir() if p.is_file() and not p.name.endswith(self._PART)]

    def _remove_stale_parts(self, older_than_s: float = 24 * 3600) -> None:
        """Temp files left by a crashed download (a live one is touched as it grows)."""
        cutoff = time.time() - older_than_s
        for p in self.dir.glob(f"*{self._PART}"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except FileNotFoundError:
                pass

    def _download(self, uri: str, path: Path) -> None:
        import fsspec  # lazy: see _expand_remote

        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{self._PART}")
        try:
            with fsspec.open(uri, "rb") as src, open(tmp, "wb") as dst:
                # the limit holds while streaming: a server that sends no length (or never ends)
                # cannot fill the disk
                size = getattr(src, "size", None)
                if isinstance(size, int) and size > self.max_bytes:
                    raise self._too_large(uri, f"it is {size} bytes")
                written = 0
                while chunk := src.read(_HASH_CHUNK):
                    written += len(chunk)
                    if written > self.max_bytes:
                        raise self._too_large(uri, f"stopped after {written} bytes")
                    dst.write(chunk)
            try:
                os.link(tmp, path)      # atomic publish; fails if another process won the race
            except FileExistsError:
                pass
        except SourceError:
            raise
        except Exception as exc:  # fsspec backends raise many types; translate at this boundary
            if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
                # the staging disk is full: not the source's fault (bad input would not be retried)
                raise NoSpace(f"cannot write {path}: {exc.strerror}") from None
            kind, reason = _fetch_failure(exc)
            raise SourceError(f"{uri}: cannot download: {reason}", kind) from exc
        finally:
            tmp.unlink(missing_ok=True)


    def _too_large(self, uri: str, detail: str) -> SourceError:
        return SourceError(f"{uri}: larger than the staging cache ({self.max_bytes} bytes, sources.cache_max_gb): "
                           f"{detail}", "too_large")


def _fetch_failure(exc: BaseException) -> tuple[str, str]:
    """(kind, reason) for an exception from an fsspec backend.

    Backends wrap the real cause (fsspec's HTTP raises FileNotFoundError for a 403 or a refused
    connection), so the whole `__cause__` chain is read."""
    chain = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    status = next((s for s in (getattr(c, "status", None) or getattr(c, "code", None) for c in chain)
                   if isinstance(s, int) and 100 <= s < 600), None)
    if status in (401, 403):
        return "permission_denied", f"permission denied (HTTP {status})"
    if status in (404, 410):
        return "not_found", f"not found (HTTP {status})"
    if status is not None:
        return "fetch_failed", f"HTTP {status} ({_reason(exc)})"
    for c in chain:
        if isinstance(c, (ConnectionError, TimeoutError, socket.gaierror)) or "Connect" in type(c).__name__:
            return "unreachable", f"unreachable ({_reason(c)})"
    if isinstance(exc, FileNotFoundError):
        return "not_found", "not found"
    if isinstance(exc, PermissionError):
        return "permission_denied", "permission denied"
    if isinstance(exc, ImportError):
        return "unsupported_url", f"the package for this URL scheme is not installed ({exc})"
    if isinstance(exc, ValueError) and "protocol" in str(exc).lower():
        return "unsupported_url", f"unknown URL scheme ({exc})"
    return "fetch_failed", _reason(exc)


def _open_locked_shared(path: Path) -> int | None:
    """An fd on `path` holding a shared lock, or None if `path` is absent (or was just evicted)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)   # evicted between our open and our lock: the caller downloads again
    return None


def _remove_if_unused(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------


def content_hash(path: str | os.PathLike) -> str:
    """`video_id`: BLAKE2b-128 of the whole file, 32 hex chars; same bytes, same id, any name.

    Only a regular file is read (SourceError otherwise): the file is opened without blocking and
    its type checked on the open descriptor, so a FIFO swapped in after a check cannot hang it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            kind, reason = local_file_problem(path) or ("unsafe_input", "not a regular file")
            raise SourceError(f"{path}: {reason}", kind)
        h = hashlib.blake2b(digest_size=16)
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
