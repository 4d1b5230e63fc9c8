"""Take sources out of a library for good: a takedown request, a folder ingested by mistake.

Each SOURCE is a uri as ingest recorded it (a local path is made absolute, as ingest does), a
folder (every source under it) or a glob (`'raw/2024-*/**'`, quoted). A source goes with the
video it gave, and that video with every other source of the same content. Removed: their rows in
every table, clip files, captions, vectors, selection entries and filter-view rows; the filter
view is then judged again (near-duplicates of a removed clip may pass now) and a Milvus Lite index
is synced (give --milvus-uri for a server). Each source keeps one `sources` row with outcome
`removed`, so later ingest runs skip it, and the same content under another name is not ingested
again either. The web UI's thumbnails and the reports in LIB showing removed clips are deleted;
shards exported and reports written elsewhere are files of their own: make them again.

Without --yes it only says what would go. Each removal is recorded in library.json.

Examples:
  recap remove lib /data/raw/bad_video.mp4                      # what would go
  recap remove lib /data/raw/bad_video.mp4 'https://cdn.example.org/v/*' --yes
  recap remove lib /data/wrong_folder/ --yes
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cli.display import one_line
from pipeline.ingest.sources import StagingCache
from pipeline.library import Library, LibraryError
from pipeline.library.layout import MILVUS_LITE, storable, utcnow
from pipeline.library.views import read_view


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lib", metavar="LIB", help="library folder")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a source uri, a folder of sources, or a glob")
    p.add_argument("--yes", action="store_true", help="remove them (without it: only say what would go)")
    p.add_argument("--milvus-uri", metavar="URI", help="Milvus server to sync as well (a Lite index in LIB always is)")
    p.add_argument("--token", metavar="T", help="Milvus token (user:password or API key)")


def run(args: argparse.Namespace) -> int:
    try:
        with Library(args.lib, write=args.yes) as lib:
            return _remove(lib, args)
    except LibraryError as e:
        print(f"recap remove: error: {e}", file=sys.stderr)
        return 2


def _remove(lib: Library, args: argparse.Namespace) -> int:
    known = _known_sources(lib)
    uris: set[str] = set()
    for pattern in args.sources:
        found = matching(pattern, known)
        if not found:
            print(f"recap remove: error: no source of {args.lib} matches {pattern!r} (nothing removed)",
                  file=sys.stderr)
            return 2
        uris |= found
    videos, uris = lib.removal_of(set(), uris)
    clip_videos = lib.read("clips", ["video_id"]).column("video_id")
    n_clips = int(pc.sum(pc.is_in(clip_videos, value_set=pa.array(sorted(videos), pa.string()))).as_py() or 0)
    print(f"{len(uris)} source(s), {len(videos)} video(s), {n_clips} clip(s)" + (":" if args.yes else " would go:"))
    for uri in sorted(uris)[:20]:
        print(f"  {one_line(uri)}" + ("  (already removed)" if known.get(uri) == "removed" else ""))
    if len(uris) > 20:
        print(f"  ... and {len(uris) - 20} more")
    if not args.yes:
        print("nothing removed: add --yes to remove them")
        return 0
    # the writer lock keeps ingest out; these a caption or index run, which would caption or embed
    # removed clips (and sync them back into Milvus) after the cleanup, and a filter run, which
    # would write a view of the clips before the removal
    with lib.lock("caption", by="remove"), lib.lock("index", by="remove"), lib.lock("filter", by="remove"):
        counts = lib.remove(videos, uris)
        lib.record_run({"at": utcnow().isoformat(), "command": shlex.join(["recap", *sys.argv[1:]]),
                        "sources": len(uris), "videos": len(videos), "clips": n_clips}, key="removals")
    print("removed rows: " + ", ".join(f"{t}={n}" for t, n in counts.items() if n))
    if counts.get("reports"):
        print(f"{counts['reports']} report(s) in the library showed removed clips and were deleted: "
              f"`recap report {shlex.quote(str(lib.root))}` makes one again (`recap serve` on request)")
    _drop_copies(lib.root, uris)
    for line in _refresh_derived(lib.root, args):
        print(line)
    return 0


def _known_sources(lib: Library) -> dict[str, str]:
    """Every uri the library knows (its sources and its videos'), with its latest outcome."""
    known = {uri: "ingested" for uri in lib.source_uris().values()}
    known.update(lib.handled_sources())
    return known


def matching(pattern: str, known: dict[str, str]) -> set[str]:
    """The known uris `pattern` names: itself, the sources under it (a folder), or those it globs
    as ingest globs (`*` and `?` within one folder, `**` across folders). A local path is made
    absolute (`~` expanded, stray bytes escaped) the way ingest recorded it."""
    if "://" not in pattern:
        pattern = storable(os.path.abspath(os.path.expanduser(pattern)))
    if pattern in known:
        return {pattern}
    folder = pattern.rstrip("/") + "/"
    under = {u for u in known if u.startswith(folder)}
    if under:
        return under
    if not any(c in pattern for c in "*?["):
        return set()
    globbed = glob_regex(pattern)
    return {u for u in known if globbed.fullmatch(u)}


def glob_regex(pattern: str) -> re.Pattern:
    """`pattern` as a regex with the glob rules of ingest (Python's `glob`, recursive): `*`, `?`
    and `[...]` never match a `/`, `**` matches across folders (`a/**/b`: `a/b` too). fnmatch
    would let `raw/*.mp4` take `raw/keep/x.mp4` as well: more than asked, for good."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)) > 0:
            body = pattern[i + 1:end].replace("\\", "\\\\")
            body = "^" + body[1:] if body.startswith("!") else "\\" + body if body.startswith("^") else body
            out.append("(?!/)[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _drop_copies(lib_root: Path, uris: set[str]) -> None:
    """Delete the staged copies of remote sources in the default cache (`sources.cache_dir`
    elsewhere is not known here; its copies are evicted by size). The web UI's thumbnails and the
    reports in the library went with the rows (`Library.drop_orphans`)."""
    cache = lib_root / ".cache"
    if cache.is_dir():
        staged = StagingCache(cache, 0)
        for uri in uris:
            if "://" in uri:
                staged.path_for(uri).unlink(missing_ok=True)


def _refresh_derived(lib_root: Path, args: argparse.Namespace) -> list[str]:
    """Judge the filter view again and sync the index, now that clips are gone."""
    said = []
    found = read_view(lib_root)
    if found is not None:
        # lazy: the filter code only when the library has a view to judge again
        from pipeline.filters.config import from_saved_config, load_filter_config
        from pipeline.filters.evaluate import run_filters
        try:
            view, _ = run_filters(lib_root, from_saved_config(found[1]) if found[1] else load_filter_config())
            said.append(f"filter view: {sum(view.column('passed').to_pylist())} of {view.num_rows} clips pass")
        except FileNotFoundError:      # no clips left: the view (already emptied) stays empty
            said.append("filter view: no clips left")
    if args.milvus_uri or (lib_root / MILVUS_LITE).exists():
        said.append(_sync_index(lib_root, args))
    return said


def _sync_index(lib_root: Path, args: argparse.Namespace) -> str:
    # lazy: pymilvus and the index code only for a library that has an index
    from index import lite
    from index.api import ClipIndex
    from pipeline.embed import NothingToIndex, load_index_config
    again = f"recap index {shlex.quote(str(lib_root))} --repair"
    if Library(lib_root).read("clips", ["clip_id"]).num_rows == 0:
        # no clip left: nothing to sync against (`recap index` refuses an empty library), yet the
        # index still holds the removed clips' vectors and fields
        if args.milvus_uri:
            return f"index: no clips left; drop the collection on {args.milvus_uri} (it holds the removed clips)"
        try:
            return f"index: no clips left; {lite.remove(lib_root / MILVUS_LITE)}"
        except (lite.Busy, OSError) as e:
            return f"index: no clips left, but {lib_root / MILVUS_LITE} was not removed ({e}): remove it"
    try:
        with ClipIndex(lib_root, load_index_config(None, []), milvus_uri=args.milvus_uri, token=args.token) as index:
            rec = index.repair(log=lambda _: None)
    except NothingToIndex:
        return f"index: no clip has a vector any more; `{again}` once there are"
    except Exception as e:  # noqa: BLE001 - the removal is done; the index can be synced later
        return f"index: not synced ({e}); run `{again}`"
    return f"index: {len(rec.extra)} vectors removed"
