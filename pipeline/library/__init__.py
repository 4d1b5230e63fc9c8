"""The library on disk, and the only code that reads or writes its tables. No Ray, no models.

    LIB/
      library.json          schema version, a record of every run
      videos/ shots/ clips/ errors/ sources/   committed tables (tables.py): part-<batch>.parquet
      _commits/             one marker per committed batch; readers see committed parts only
      captions/             caption versions, never overwritten (captions.py)
      embeddings/<name>/    vectors per embedder, so Milvus can be rebuilt without the models (embeddings.py)
      views/filters.parquet the filter view: passed, reject_reasons, duplicate_of (views.py)
      selections/           named clip selections (selections.py)
      media/                clip files (remux or encode), under media/<id[:2]>/<video_id>/
      .claims/              content claims of a running ingest (claims.py)
      milvus.db             Milvus Lite, owned by `index/` (rebuilt from the tables above)
      index/                `index/`'s record of its last sync into the collection (index/ledger.py)

Every schema is declared in schema.py; every file is written whole or not at all (files.py); the
names above and the clip media path are in layout.py.
"""

import importlib
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562), so that importing one light module of the package (`layout`, as
# the ingest child does) does not load the tables with it.
_EXPORTS = {"Library": "tables", "LibraryError": "files", "DamagedFile": "files", "CannotWrite": "files",
            "CaptionStore": "captions"}

if TYPE_CHECKING:
    from pipeline.library.captions import CaptionStore
    from pipeline.library.files import CannotWrite, DamagedFile, LibraryError
    from pipeline.library.tables import Library

__all__ = ["Library", "LibraryError", "DamagedFile", "CannotWrite", "CaptionStore"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.library.{_EXPORTS[name]}"), name)
