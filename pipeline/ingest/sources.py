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
import glob as globlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import fsspec
import pyarrow.parquet as pq

from pipeline.ingest.config import SourcesConfig

MANIFEST_SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")
_HASH_CHUNK = 1 << 20


class SourceError(Exception):
    """A source that cannot be used; the message names it and says why.

    `kind`: "bad_argument" (a SOURCE argument or manifest the user must fix), or for a remote
    fetch "not_found", "permission_denied", "unreachable", "unsupported_url", "fetch_failed"."""

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
        if urlparse(arg).scheme.lower() != "file":
            return _expand_remote(arg, extensions)
        arg = _file_url_path(arg)
    path = Path(arg).expanduser()
    if path.is_dir():
        # hidden files are skipped, as a glob does: macOS "._x.mp4" sidecars, our own ".part" files
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not found:
            raise SourceError(f"{arg}: directory has no video files (looked for {_ext_list(extensions)})")
        return [_local(p) for p in found]
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return read_manifest(path)
        return [_local(path)]
    if _GLOB_CHARS.search(arg):
        found = sorted(Path(p) for p in globlib.glob(os.path.expanduser(arg), recursive=True))
        found = [p for p in found if p.is_file() and p.suffix.lower() in extensions]
        if not found:
            raise SourceError(f"{arg}: pattern matches no video files (looked for {_ext_list(extensions)})")
        return [_local(p) for p in found]
    if path.exists() or path.is_symlink():
        raise SourceError(f"{arg}: not a regular file, directory or manifest")
    raise SourceError(f"{arg}: no such file or directory")


def _expand_remote(url: str, extensions: set[str]) -> list[Source]:
    """A plain URL is passed through untouched (no network); a remote glob or folder (`.../`) is listed."""
    is_glob = bool(_GLOB_CHARS.search(urlparse(url).path))
    if not is_glob and not url.endswith("/"):
        return [Source(url, remote=True)]

    try:
        fs, _, _ = fsspec.core.get_fs_token_paths(url)
        names = fs.glob(url) if is_glob else fs.find(url)
    except Exception as exc:  # any backend failure: missing package, credentials, network
        kind, reason = _fetch_failure(exc)
        raise SourceError(f"{url}: cannot list: {reason}", kind) from exc
    protocol = urlparse(url).scheme
    found = sorted(n for n in names if Path(n).suffix.lower() in extensions)
    if not found:
        raise SourceError(f"{url}: matches no video files (looked for {_ext_list(extensions)})")
    return [Source(n if is_url(n) else f"{protocol}://{n}", remote=True) for n in found]


def read_manifest(path: Path) -> list[Source]:
    """The uris a manifest lists; relative paths are taken from the manifest's folder.

    Entries are not checked for existence: a missing file in a long manifest is one failed video
    (an errors row), not a reason to refuse the whole job."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
            uris = [ln for ln in lines if ln and not ln.startswith("#")]
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                _require_uri_column(path, reader.fieldnames or [])
                uris = [row["uri"] for row in reader]
        elif suffix == ".jsonl":
            rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for i, row in enumerate(rows):
                if not isinstance(row, dict) or "uri" not in row:
                    raise SourceError(f"{path}: line {i + 1} has no 'uri' field")
            uris = [row["uri"] for row in rows]
        else:
            schema = pq.read_schema(path)
            _require_uri_column(path, schema.names)
            uris = pq.read_table(path, columns=["uri"]).column("uri").to_pylist()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: cannot read manifest: {_reason(exc)}") from exc
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises its own types for a damaged parquet file
        raise SourceError(f"{path}: cannot read manifest: {_reason(exc)}") from exc
    uris = [str(u).strip() for u in uris if u is not None and str(u).strip()]
    if not uris:
        raise SourceError(f"{path}: manifest lists no uris")
    return [manifest_entry(path.parent, u) for u in uris]


def _require_uri_column(path: Path, columns: list[str]) -> None:
    if "uri" not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise SourceError(f"{path}: manifest needs a 'uri' column (found {found})")


def manifest_entry(folder: Path, uri: str) -> Source:
    if is_url(uri):
        if urlparse(uri).scheme.lower() == "file":
            return _local(Path(_file_url_path(uri)))
        return Source(uri, remote=True)
    path = Path(uri).expanduser()
    return _local(path if path.is_absolute() else folder / path)


def _local(path: Path) -> Source:
    return Source(os.path.abspath(path), remote=False)


def _file_url_path(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else unquote(parsed.path)


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
        suffix = Path(urlparse(uri).path).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
        return self.dir / f"{digest}{suffix}"

    def fetch(self, uri: str) -> Path:
        """A local path holding `uri`'s bytes, in use until `release(uri)`.

        Local paths (and file:// URLs) are returned as they are, without a copy."""
        if not is_url(uri) or urlparse(uri).scheme.lower() == "file":
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{self._PART}")
        try:
            with fsspec.open(uri, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_HASH_CHUNK):
                    dst.write(chunk)
            try:
                os.link(tmp, path)      # atomic publish; fails if another process won the race
            except FileExistsError:
                pass
        except SourceError:
            raise
        except Exception as exc:  # fsspec backends raise many types; translate at this boundary
            kind, reason = _fetch_failure(exc)
            raise SourceError(f"{uri}: cannot download: {reason}", kind) from exc
        finally:
            tmp.unlink(missing_ok=True)


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
    """`video_id`: BLAKE2b-128 of the whole file, 32 hex chars; same bytes, same id, any name."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
