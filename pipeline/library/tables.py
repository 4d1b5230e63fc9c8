"""The committed tables of a library (videos, shots, clips, errors, sources): written in atomic
batches by one writer at a time, read by anyone through one committed-parts reader.

Writes and resume:
- Every table is a folder of `part-<batch_id>.parquet` files. A batch (a few videos' rows) is
  written table by table, each file under a temporary name and renamed into place, so a reader
  never sees a half-written file.
- The batch becomes real when its commit marker `_commits/<batch_id>.json` is renamed into place,
  after all its parts. On opening for writing, parts whose batch has no marker (a crash between
  the two), stray temporary files and a crashed run's claims are removed, so a rerun never
  duplicates rows.
- The `sources/` table records every source uri handled (ingested, duplicate or failed), which is
  what a rerun skips.
- Compaction: a job commits every few videos, so a large library would be thousands of small parts
  per table, and every reader opens them all (2,000 batches: ~4 s to read the clips). When a table
  holds more than `COMPACT_PARTS` parts that no compaction merged yet, `compact` merges them
  into one part per table under a new batch (and all parts into one once `COMPACT_LEVELS`
  compacted parts have piled up), whose marker `_commits/<batch_id>.compact.json` names the
  batches it replaces; rows keep their own `batch_id`. Ingest runs it after every commit, so a
  long job's readers never face more than ~80 parts and no merge rewrites more than it must.
  Readers skip replaced parts from the moment that marker exists; the replaced files are removed
  right after (or by the next writer's recovery, after a crash).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.library import files
from pipeline.library.captions import CaptionStore
from pipeline.library.claims import CLAIMS, RunClaims
from pipeline.library.embeddings import EMBEDDINGS, embeddings_dir
from pipeline.library.files import (
    CannotWrite,
    LibraryError,
    atomic_write_bytes,
    atomic_write_table,
    new_batch_id,
    read_again_if_merged,
    read_parts,
    require_utf8_path,
    writable_folder,
    write_parts_as_one,
)
from pipeline.library.layout import COMMITS, MEDIA, RECORD, REPORT_DIR, TMP_SUFFIX, UI_DIR, storable, utcnow
from pipeline.library.schema import CLIP_ID, SCHEMA_VERSION, TABLES, table_schema
from pipeline.library.selections import drop_clips_outside
from pipeline.library.views import VIEW_PATH, read_view, view_source_batch

COMPACT_SUFFIX = ".compact"      # _commits/<batch_id>.compact.json: a batch that replaces others
_LISTING_TRIES = 20              # listings of _commits/ a reader makes while writers keep committing


def rows_to_table(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) to an Arrow table with the declared schema; missing nullable columns are null."""
    schema = table_schema(table)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    try:
        return pa.Table.from_pydict(columns, schema=schema)
    except UnicodeEncodeError:   # a file name that is not UTF-8, in a uri or a message: rare, so checked only then
        columns = {name: [_storable_value(v) for v in values] for name, values in columns.items()}
        return pa.Table.from_pydict(columns, schema=schema)


def _key_columns(table: str) -> list[str]:
    """The columns that say which video or source a row of a committed table belongs to."""
    return [c for c in ("video_id", "uri", "source") if c in table_schema(table).names]


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable_value(v) for v in value]
    return value


def take_lock(path: Path, what: str, shared: bool = False) -> int:
    """An exclusive flock on `path` (created if needed): one holder at a time does `what` (a
    second open, even in the same process, is refused). The kernel drops it when the process
    dies, so a kill -9 never leaves a stale lock. Returns the descriptor to release."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:     # a read-only library: said in one line by every command that writes
        raise CannotWrite(path, e) from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        # the holder wrote its pid and what it does (a lock may be held by another kind of job:
        # `recap remove` holds the caption lock)
        pid, _, doing = os.read(fd, 4096).decode(errors="replace").strip().partition(" ")
        os.close(fd)
        raise LibraryError(f"another recap process (pid {pid or '?'}) is {doing or what}; wait for it to finish, "
                           "or stop it and rerun") from None
    # the note only names the holder to a process refused: on a full disk the lock holds without
    # it, and the job goes on to say which file it cannot write (or frees space: `recap remove`)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}".encode())
    return fd


@contextlib.contextmanager
def locked(path: Path, what: str, shared: bool = False) -> Iterator[None]:
    """`take_lock` for the length of a block."""
    fd = take_lock(path, what, shared)
    try:
        yield
    finally:
        os.close(fd)


# A clips.path value that leaves the library whatever the disk holds: absolute, or through `..`.
OUTSIDE_PATH = r"^/|(^|/)\.\.(/|$)"


def library_file(root: str | Path, relative: str) -> Path:
    """The clip file a `clips.path` value names, refused (LibraryError) unless it lies inside the
    library `root`: no absolute path, no `..`, no symlink that leads out. What every reader that
    opens a clip file goes through."""
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(base):
        raise LibraryError(f"{root}/clips: clip path {relative!r} is outside the library")
    return path


def checked_clip_row(root: str | Path, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with its `path` as the checked clip file (`library_file`), for readers outside this
    package that join a clip's path to the library root themselves (the captioner)."""
    return dict(row, path=str(library_file(root, row["path"]))) if row.get("path") else row


def _first_match(values: pa.ChunkedArray, pattern: str, negate: bool = False) -> str | None:
    """The first value that matches `pattern` (does not, with `negate`), or None."""
    hits = pc.match_substring_regex(values, pattern)
    hits = pc.invert(hits) if negate else hits
    index = pc.index(hits, True).as_py()
    return None if index < 0 else values[index].as_py()


@contextlib.contextmanager
def _saying_what_was_lost(lost: str) -> Iterator[None]:
    """A write that failed (disk full, a mount gone read-only) says what it did not record; what
    was committed before stays."""
    try:
        yield
    except CannotWrite as e:
        raise LibraryError(f"{e}: {lost}") from None


class Library:
    """A clip library folder. Opened to read by default (many readers, never changes anything);
    `write=True` creates it if needed, takes the single-writer lock and removes what a crashed
    writer left behind."""

    def __init__(self, root: str | Path, write: bool = False):
        self.root = Path(root)
        meta_path = self.root / RECORD
        require_utf8_path(self.root, "a library's path")
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"{self.root} is a file, not a library folder")
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if not isinstance(meta, dict):
                    raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            except (OSError, ValueError) as e:
                raise LibraryError(f"{meta_path}: cannot read the library's record ({e})") from None
            if meta.get("schema_version") != SCHEMA_VERSION:
                raise LibraryError(f"{self.root}: schema version {meta.get('schema_version')}, "
                                   f"this recap reads version {SCHEMA_VERSION}")
        elif write:
            if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
                raise LibraryError(f"{self.root} exists, is not empty and is not a recap library")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:   # a file on its path, no permission, read-only file system
                raise LibraryError(f"cannot create the library folder {self.root}: {e.strerror}") from None
            meta = {"schema_version": SCHEMA_VERSION, "created_at": utcnow().isoformat(), "runs": []}
            atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        else:
            raise LibraryError(f"{self.root} is not a recap library (no library.json); run `recap ingest` first")
        self.meta = meta
        self.captions = CaptionStore(self.root)
        self._lock: int | None = None
        if write:
            self._lock = take_lock(self.root / ".writer.lock", f"writing to {self.root}")
            self._check_writable()
            self.recover()

    def _check_writable(self) -> None:
        """Make the folders a writer needs and write a file into each: a read-only mount, a folder
        of another user or an immutable one is refused now, not after a job's work."""
        try:
            for name in ["", *TABLES, COMMITS, MEDIA]:
                writable_folder(self.root / name)
        except CannotWrite:
            self.close()
            raise

    def close(self) -> None:
        """Release the writer lock (also released when the process ends, however it ends)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def lock(self, job: str, by: str | None = None, shared: bool = False) -> contextlib.AbstractContextManager[None]:
        """One `recap <job>` at a time writes to this library (e.g. two captioning runs would do
        the same GPU work twice); a second is refused with a clear message. `by`: the command
        taking `job`'s lock to keep it out (`recap remove`), which that message names. `shared`:
        runs of `job` may overlap (index runs take turns on their store), only `by` is kept out."""
        return locked(self.root / f".{job}.lock", f"running `recap {by or job}` on {self.root}", shared)

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- crash recovery -------------------------------------------------------------------
    def committed_batches(self) -> set[str]:
        """Batches whose parts readers see: committed, and not replaced by a compaction."""
        return self._batches()[0]

    def _batches(self) -> tuple[set[str], set[str], str | None]:
        """(live batches, batches replaced by a compaction, the newest batch of ingested rows)."""
        for _ in range(_LISTING_TRIES):
            try:
                return self._read_markers(self._marker_names())
            except FileNotFoundError:   # a newer compaction removed a marker just listed: list again
                continue
        raise LibraryError(f"{self.root / COMMITS}: the commit markers kept changing while being read")

    def _marker_names(self) -> list[str]:
        return sorted(p.name for p in (self.root / COMMITS).glob("*.json"))

    def _read_markers(self, names: list[str]) -> tuple[set[str], set[str], str | None]:
        regular = {n.removesuffix(".json") for n in names if not n.endswith(f"{COMPACT_SUFFIX}.json")}
        compactions = [n.removesuffix(f"{COMPACT_SUFFIX}.json") for n in names if n.endswith(f"{COMPACT_SUFFIX}.json")]
        replaced: set[str] = set()
        newest = max(regular, default=None)
        for batch in compactions:
            path = self.root / COMMITS / f"{batch}{COMPACT_SUFFIX}.json"
            try:
                marker = json.loads(path.read_text())
                replaced.update(str(b) for b in marker["replaces"])
                newest = max(filter(None, [newest, marker["newest"]]), default=None)
            except FileNotFoundError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise LibraryError(f"{path}: cannot read a compaction marker ({e}); restore it from a "
                                   "backup") from None
        return (regular | set(compactions)) - replaced, replaced, newest

    def recover(self) -> int:
        """Remove uncommitted parts, temporary files and claims left by a crash, and what a
        compaction replaced; return how many."""
        committed, replaced, _ = self._batches()
        removed = self._remove_replaced(replaced)
        for folder in [*TABLES, COMMITS, MEDIA]:
            base = self.root / folder
            tmp_files = base.rglob(f"*{TMP_SUFFIX}") if folder == MEDIA else base.glob(f"*{TMP_SUFFIX}")
            for p in tmp_files:
                p.unlink(missing_ok=True)
                removed += 1
            if folder in (COMMITS, MEDIA):
                continue
            for p in base.glob("part-*.parquet"):
                if p.stem.removeprefix("part-") not in committed:
                    p.unlink(missing_ok=True)
                    removed += 1
        if (self.root / CLAIMS).exists():   # only a writer claims, and we hold the writer lock
            shutil.rmtree(self.root / CLAIMS, ignore_errors=True)
        # clip files of a video whose rows were never committed (a crash between the two)
        return removed + self._remove_orphan_media()

    # ---- writing --------------------------------------------------------------------------
    def _require_writer(self) -> None:
        if self._lock is None:
            raise LibraryError(f"{self.root} was opened read-only")

    def commit(self, rows: dict[str, list[dict[str, Any]]]) -> str | None:
        """Write one batch of rows (table name -> rows) atomically; return its batch id."""
        self._require_writer()
        if not any(rows.values()):
            return None
        batch_id = new_batch_id()
        with _saying_what_was_lost("this batch was not committed; rerun the same command once it is fixed (committed "
                      "work is kept, the rest is redone)"):
            for table, table_rows in rows.items():
                if not table_rows:
                    continue
                for row in table_rows:
                    row["batch_id"] = batch_id
                arrow = rows_to_table(table, table_rows)
                atomic_write_table(self.root / table / f"part-{batch_id}.parquet", arrow)
            counts = {t: len(r) for t, r in rows.items()}
            atomic_write_bytes(self.root / COMMITS / f"{batch_id}.json", json.dumps(counts).encode())
        return batch_id

    def record_run(self, run: dict[str, Any], key: str = "runs") -> None:
        """Append a run record (command, config, counts) to library.json: ingest runs under `runs`,
        removals under `removals`."""
        self._require_writer()
        self.meta.setdefault(key, []).append(run)
        with _saying_what_was_lost("the run's record was not added to library.json (its work is committed)"):
            atomic_write_bytes(self.root / RECORD, json.dumps(self.meta, indent=2, default=str).encode())

    def _remove_replaced(self, replaced: set[str]) -> int:
        """Delete the parts and markers of batches a compaction replaced (they are never read)."""
        removed = 0
        for batch in replaced:
            for table in TABLES:
                part = self.root / table / f"part-{batch}.parquet"
                if part.exists():
                    part.unlink()
                    removed += 1
            for marker in (f"{batch}.json", f"{batch}{COMPACT_SUFFIX}.json"):
                (self.root / COMMITS / marker).unlink(missing_ok=True)
        return removed

    def compact(self, min_parts: int | None = None) -> str | None:
        """Merge the batches committed since the last compaction into one part per table when a
        table has more than `min_parts` of them (`files.COMPACT_PARTS`), or everything once
        `COMPACT_LEVELS` compacted parts have piled up (so a job commits cheaply and readers open
        a few files at any size; see the module docstring). Returns the compaction's batch id, or
        None when nothing needed it. Streams one part at a time: memory is one row group."""
        self._require_writer()
        names = self._marker_names()
        live, _, newest = self._read_markers(names)
        compacted = {n.removesuffix(f"{COMPACT_SUFFIX}.json") for n in names if n.endswith(f"{COMPACT_SUFFIX}.json")}
        compacted &= live
        # the batches no compaction merged yet: those after the last one, and those a removal (a
        # compaction of only the batches holding removed rows) left before it
        since = live - compacted
        merge = live if len(compacted) >= files.COMPACT_LEVELS else since
        parts = {t: self._table_parts(t, merge) for t in TABLES}
        if len(merge) < 2 or (merge is since and max(len(ps) for ps in parts.values())
                              <= (files.COMPACT_PARTS if min_parts is None else min_parts)):
            return None
        batch_id = new_batch_id()
        with _saying_what_was_lost("the compaction was left undone (the library reads as before); rerun to retry"):
            for table, table_parts in parts.items():
                if table_parts:
                    write_parts_as_one(table_parts, table_schema(table), self.root / table / f"part-{batch_id}.parquet")
            marker = {"replaces": sorted(merge), "newest": newest}
            atomic_write_bytes(self.root / COMMITS / f"{batch_id}{COMPACT_SUFFIX}.json",
                               json.dumps(marker).encode())
        self._remove_replaced(merge)
        return batch_id

    # ---- taking videos out for good ---------------------------------------------------------
    def remove(self, video_ids: set[str], uris: set[str]) -> dict[str, int]:
        """Take videos (by content id) and sources (by uri) out of the library for good, and every
        uri and video either leads to: their rows in every table, clip files, captions, vectors
        and selection entries. Returns the rows removed per table (and `media` folders).

        The tables change in one step, the way a compaction does: the batches holding any of those
        rows are replaced by one batch with the rest, plus one `sources` row per uri with outcome
        `removed`, which later runs skip; content that hashes to a removed video is not ingested
        again under another name either (`start_claims`). What was derived from the rows is
        cleaned after that step (`drop_orphans`): a crash in between leaves caption, vector or
        selection rows that name no clip, which readers ignore and the next removal deletes."""
        self._require_writer()
        live, _, newest = self._read_markers(self._marker_names())
        keys = {t: self.read(t, _key_columns(t)) for t in ("videos", "sources")}
        video_ids, uris = self.removal_of(video_ids, uris, keys)
        id_set, uri_set = pa.array(sorted(video_ids), pa.string()), pa.array(sorted(uris), pa.string())

        def gone(t: pa.Table) -> pa.Array:
            """Which rows of a table (or of its key columns) go."""
            mask = pc.is_in(t.column("video_id"), value_set=id_set)
            for col in ("uri", "source"):
                if col in t.column_names:
                    mask = pc.or_(mask, pc.is_in(t.column(col), value_set=uri_set))
            return pc.fill_null(mask, False)

        # the rows that go, per live part of each table: the batches to replace, and the counts
        counts: dict[str, int] = dict.fromkeys(TABLES, 0)
        affected: set[str] = set()
        for table in TABLES:
            for part in self._table_parts(table, live):
                n = int(pc.sum(gone(read_parts([part], table_schema(table), _key_columns(table)))
                               .cast(pa.int64())).as_py() or 0)
                if n:
                    counts[table] += n
                    affected.add(part.stem.removeprefix("part-"))
        if affected or uris:
            batch_id = new_batch_id()
            marks = rows_to_table("sources", [{"uri": u, "video_id": v, "outcome": "removed", "at": utcnow(),
                                               "batch_id": batch_id} for u, v in self._video_of(sorted(uris), keys)])
            with _saying_what_was_lost("nothing was removed (the library reads as before); rerun to retry"):
                for table in TABLES:
                    parts = self._table_parts(table, affected)
                    extra = marks if table == "sources" else None
                    if parts or extra is not None:
                        write_parts_as_one(parts, table_schema(table), self.root / table / f"part-{batch_id}.parquet",
                                           keep=lambda t: pc.invert(gone(t)), extra=extra)
                marker = {"replaces": sorted(affected), "newest": newest, "removed": len(uris)}
                atomic_write_bytes(self.root / COMMITS / f"{batch_id}{COMPACT_SUFFIX}.json",
                                   json.dumps(marker).encode())
            self._remove_replaced(affected)
        counts.update(self.drop_orphans())
        return counts

    def removal_of(self, video_ids: set[str], uris: set[str], keys: dict[str, pa.Table] | None = None
                   ) -> tuple[set[str], set[str]]:
        """(video ids, uris) that `remove(video_ids, uris)` takes out: a uri leads to the video it
        gave, and a video to every uri of its content."""
        keys = keys or {t: self.read(t, _key_columns(t)) for t in ("videos", "sources")}
        rows = keys["videos"].to_pylist() + keys["sources"].to_pylist()
        video_ids, uris = set(video_ids), set(uris)
        while True:     # until nothing is added: a uri's rows can name several videos (a file that changed)
            more_ids = video_ids | {r["video_id"] for r in rows if r["uri"] in uris and r["video_id"]}
            more_uris = uris | {r["uri"] for r in rows if r["video_id"] in more_ids}
            if (more_ids, more_uris) == (video_ids, uris):
                return video_ids, uris
            video_ids, uris = more_ids, more_uris

    @staticmethod
    def _video_of(uris: list[str], keys: dict[str, pa.Table]) -> list[tuple[str, str | None]]:
        """(uri, the video it gave) for each uri, from the videos and sources rows."""
        of: dict[str, str | None] = {}
        for t in ("sources", "videos"):
            for r in keys[t].to_pylist():
                if r["video_id"]:
                    of.setdefault(r["uri"], r["video_id"])
        return [(u, of.get(u)) for u in uris]

    def drop_orphans(self) -> dict[str, int]:
        """Delete what names no committed clip or video any more (what `remove` left after a crash,
        or would leave): caption rows, vectors, selection entries, filter-view rows, clip-file
        folders, and the frames the web UI and the reports in the library show of them (with the
        pages that show them: built again on request, or by `recap report`). Returns how many of each."""
        clip_ids = self.read("clips", ["clip_id"]).column("clip_id").combine_chunks()
        stores = {"captions": self.captions.parts(),
                  "embeddings": sorted((self.root / EMBEDDINGS).glob("*/part-*.parquet")),
                  "view": [p for p in [self.root / VIEW_PATH] if p.exists()]}
        counts = {name: files.drop_rows_outside(parts, "clip_id", clip_ids) for name, parts in stores.items()}
        counts["selections"] = drop_clips_outside(self.root, clip_ids)
        counts["media"] = self._remove_orphan_media()
        counts["thumbnails"] = counts["reports"] = 0
        kept = set(clip_ids.to_pylist())
        for folder in (self.root / UI_DIR, self.root / UI_DIR / REPORT_DIR, self.root / REPORT_DIR):
            thumbs = [p for p in (folder / "thumbs").glob("*.jpg") if p.stem not in kept]
            for p in thumbs:
                p.unlink(missing_ok=True)
            counts["thumbnails"] += len(thumbs)
            if thumbs and folder.name == REPORT_DIR and (folder / "index.html").exists():
                (folder / "index.html").unlink()
                counts["reports"] += 1
        return counts

    def _remove_orphan_media(self) -> int:
        """Remove the clip-file folders of videos the tables do not hold (a crash between writing
        the files and committing the rows, or a removal)."""
        videos, removed = self.video_ids(), 0
        for folder in (self.root / MEDIA).glob("*/*"):
            if folder.is_dir() and folder.name not in videos:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def removed_video_ids(self) -> set[str]:
        """Videos taken out with `remove`: content a later run does not ingest again."""
        t = self.read("sources", ["video_id", "outcome"])
        t = t.filter(pc.equal(t.column("outcome"), "removed"))
        return {v for v in t.column("video_id").to_pylist() if v}

    def start_claims(self) -> RunClaims:
        """Claims for one ingest run: which content a worker of this run took first (see claims.py)."""
        self._require_writer()
        return RunClaims.start(self.root, self.video_ids(), self.removed_video_ids())

    # ---- reading: the one committed-parts reader ------------------------------------------
    def parts(self, table: str) -> list[Path]:
        """Committed part files of a table: parts of a batch still being written are not there
        yet, parts a compaction replaced are not there any more. Listed again when a compaction
        in another process committed while the folder was being listed (its replaced parts may
        already be gone, its own part not yet seen as live)."""
        for _ in range(_LISTING_TRIES):
            names = self._marker_names()
            try:
                live = self._read_markers(names)[0]
            except FileNotFoundError:
                continue
            found = self._table_parts(table, live)
            if self._marker_names() == names:
                return found
        raise LibraryError(f"{self.root / COMMITS}: the commit markers kept changing while being read")

    def _table_parts(self, table: str, live: set[str]) -> list[Path]:
        return sorted(p for p in (self.root / table).glob("part-*.parquet") if p.stem.removeprefix("part-") in live)

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """All committed rows of a table with its declared schema (a column that older parts lack
        is null); an empty table when there are none. A part that a compaction removed between
        listing and reading is read again from the new listing."""
        return read_again_if_merged(lambda: read_parts(self.parts(table), table_schema(table), columns))

    def handled_sources(self) -> dict[str, str]:
        """uri -> latest outcome for every source an earlier run handled. `failed` (an unexpected
        failure, not a bad input) is retried by the next run, so a source can have several rows."""
        t = self.read("sources", ["uri", "outcome", "at"]).sort_by("at")
        return dict(zip(t.column("uri").to_pylist(), t.column("outcome").to_pylist()))

    def failing_sources(self) -> list[dict[str, Any]]:
        """The sources whose latest outcome is `error` or `failed`, by uri, each with its latest
        error row: uri, outcome, stage, error_type, message, at. Error rows are history: a source
        that failed and was ingested by a later run has rows but is not failing."""
        failing = {uri: outcome for uri, outcome in self.handled_sources().items() if outcome in ("error", "failed")}
        if not failing:
            return []
        latest: dict[str, dict[str, Any]] = {}
        for row in self.read("errors", ["source", "stage", "error_type", "message", "at"]).sort_by("at").to_pylist():
            if row["source"] in failing:
                latest[row["source"]] = row
        return [{"uri": uri, "outcome": failing[uri], **{k: v for k, v in latest.get(uri, {}).items() if k != "source"}}
                for uri in sorted(failing)]

    def video_ids(self) -> set[str]:
        return set(self.read("videos", ["video_id"]).column("video_id").to_pylist())

    def source_uris(self) -> dict[str, str]:
        """video_id -> the uri it was ingested from."""
        t = self.read("videos", ["video_id", "uri"])
        return dict(zip(t.column("video_id").to_pylist(), t.column("uri").to_pylist()))

    def clips(self, columns: list[str] | None = None) -> pa.Table:
        """The committed clips (FileNotFoundError when there are none yet: nothing to work on).
        Ids and clip-file paths are checked here, for every reader: an id names files, and a path
        must stay inside the library (LibraryError names the first bad row of a tampered table)."""
        clips = self.read("clips", columns)
        if clips.num_rows == 0:
            raise FileNotFoundError(f"{self.root}: no committed clips (run `recap ingest` first)")
        # checked column-wise, without touching the disk: 500k clips in milliseconds (one path
        # resolved per row took ~90 us each); symlinks are resolved where a file is opened
        if "clip_id" in clips.column_names:
            bad = _first_match(clips.column("clip_id"), f"^{CLIP_ID.pattern}$", negate=True)
            if bad is not None:
                raise LibraryError(f"{self.root}/clips: clip id {bad!r} is not an id (letters, digits, '_', '-')")
        if "path" in clips.column_names:
            bad = _first_match(clips.column("path").drop_null(), OUTSIDE_PATH)
            if bad is not None:
                raise LibraryError(f"{self.root}/clips: clip path {bad!r} is outside the library")
        return clips

    def media_path(self, relative: str) -> Path:
        """A clip file named by a `clips.path` value (see `library_file`)."""
        return library_file(self.root, relative)

    def signature(self, embedders: Iterable[str] = ()) -> tuple:
        """What the clip table (and the vectors of `embedders`) is read from: names, sizes and
        times of the committed parts, captions, view and embeddings, and the default caption
        version. Equal signatures mean nothing a reader sees has changed."""
        files = [*self.parts("clips"), *self.parts("videos"), *self.captions.parts(), self.root / VIEW_PATH]
        for name in embedders:
            folder = embeddings_dir(self.root, name)
            files += sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
        stats = []
        for f in files:
            try:
                st = f.stat()
                stats.append((str(f), st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                stats.append((str(f), None))
        return (self.captions.default(), *stats)

    def newest_batch(self) -> str | None:
        """The most recently committed batch of rows (batch ids sort in write order; a compaction
        adds no rows, so it does not count: a filter view stays as fresh as it was)."""
        return self._batches()[2]

    def view_is_stale(self) -> bool:
        """The filter view judged fewer batches than are committed (or there is none)."""
        seen = view_source_batch(self.root)
        return seen is None or seen < (self.newest_batch() or "")

    def clip_table(self, caption_version: str = "", columns: list[str] | None = None) -> pa.Table:
        """One row per committed clip, sorted by clip_id: the clip columns that are scalars (or
        `columns`), `source` (the video's uri), the filter view's `passed` and `duplicate_of` when
        there is a view, and `caption` + `caption_version` of
        `caption_version` (the default version when "", or else each clip's latest ok caption).
        What filters, selection, captioning and the index all read. Raises FileNotFoundError when
        the library has no clips yet."""
        schema = table_schema("clips")
        if columns is None:
            columns = [f.name for f in schema if not pa.types.is_nested(f.type) and f.name != "batch_id"]
        clips = self.clips(columns)
        uri_of = self.source_uris()
        clips = clips.append_column("source", pa.array([uri_of.get(v) for v in clips.column("video_id").to_pylist()],
                                                       pa.string()))
        found = read_view(self.root)
        if found is not None:
            clips = clips.join(found[0].select(["clip_id", "passed", "duplicate_of"]), "clip_id",
                               join_type="left outer")
        caps = self.captions.latest_ok(caption_version or self.captions.default())
        if caps.num_rows:
            clips = clips.join(caps.rename_columns(["clip_id", "caption", "caption_version"]), "clip_id",
                               join_type="left outer")
        return clips.sort_by("clip_id")

    def passing_clip_ids(self) -> set[str] | None:
        """Clip ids the filter view passes, None when there is no view yet."""
        found = read_view(self.root)
        if found is None:
            return None
        view = found[0]
        return set(view.filter(pc.fill_null(view.column("passed"), False)).column("clip_id").to_pylist())
