"""The Milvus collection of a library: one row per clip, primary key `clip_id`, the scalar fields
users filter on, one vector field per embedder (`<embedder>_vec`, cosine) and, per vector field,
a `has_<embedder>` flag (a clip without a caption yet has no caption vector, and Milvus would
return such rows as zero vectors).

Milvus Lite (a folder, `LIB/milvus.db` by default) admits one process, so one `MilvusStore` writes;
writes are upserts, so repeating them changes nothing. `row_hash` holds a digest of everything
written for the clip, which is how `recap index --check` finds stale rows.

Milvus Lite's folder is a cache of Parquet: a store that fails to open or read is reported as
`StoreDamaged` (`recap index --repair` removes and rebuilds it), one held by another process as
`StoreBusy` naming that process (see `index.lite`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from index import lite
from index.config import INDEX_PARAM_KEYS, SEARCH_PARAM_KEYS, MilvusConfig
from index.ledger import TOKEN_PROPERTY
from pipeline.library.layout import MILVUS_LITE
from trainer.diskfull import no_space_errno

PK = "clip_id"
ROW_HASH = "row_hash"
VARCHAR_MAX = {"caption": 65535, "ocr_text": 65535, "source": 4096, "path": 4096}
# Milvus scalar type -> the ScalarField slot a request carries it in, and the Arrow type it is sent as
SCALAR_SLOTS = {"INT64": ("long_data", pa.int64()), "DOUBLE": ("double_data", pa.float64()),
                "VARCHAR": ("string_data", pa.string()), "BOOL": ("bool_data", pa.bool_())}


class StoreError(RuntimeError):
    """Milvus is unreachable or refused a request; the message says which server and why."""


class StoreBusy(StoreError):
    """Another process holds the Milvus Lite folder (Lite admits one process at a time)."""

    def __init__(self, message: str, pid: int):
        super().__init__(message)
        self.pid = pid


class StoreFull(StoreError):
    """The disk of the Milvus Lite folder is full: the store is not damaged, and is kept."""


class StoreDamaged(StoreError):
    """The Milvus Lite folder cannot be opened or read; Parquet is intact and rebuilds it."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


def vector_field(embedder: str) -> str:
    return f"{embedder}_vec"


def has_field(embedder: str) -> str:
    return f"has_{embedder}"


@dataclass(frozen=True)
class ScalarSpec:
    name: str
    kind: str    # int, float, string, bool


@dataclass
class RowBatch:
    """Rows of the collection, column-wise (built by `index.rows`, written by `MilvusStore.write`)."""
    ids: pa.Array
    scalars: dict[str, pa.Array]                          # field -> values
    vectors: dict[str, tuple[np.ndarray, np.ndarray]]     # embedder -> (vectors, present)
    hashes: list[str]                                     # row_hash of each row

    def __len__(self) -> int:
        return len(self.ids)


class MilvusStore:
    """A connection to Milvus (Lite file or server) and the library's collection in it."""

    def __init__(self, lib_root: str | Path, cfg: MilvusConfig, notify: Callable[[str], None] | None = None,
                 lock_wait_s: float | None = None):
        self.cfg = cfg
        self.lock_wait_s = cfg.lock_wait_s if lock_wait_s is None else lock_wait_s
        self.lib_root = Path(lib_root)
        self.is_lite = cfg.is_lite()
        self.uri = cfg.uri or str(self.lib_root / MILVUS_LITE)
        self.collection = cfg.collection or ("clips" if self.is_lite else
                                             "recap_" + hashlib.sha1(str(self.lib_root.resolve()).encode()).hexdigest()[:12])
        self.index_type = cfg.lite_index if self.is_lite else cfg.server_index
        self.notify = notify
        self._fields: list[dict[str, Any]] | None = None
        self._loaded = False
        self._connect()

    def _connect(self) -> None:
        # lazy: pymilvus takes ~0.8 s to import; only store operations need it
        from pymilvus import MilvusClient

        # pymilvus (its import configures its loggers), milvus_lite and the gRPC server it runs in this
        # process log tracebacks of what reaches the caller anyway as a StoreError (or of pymilvus
        # calls Lite does not implement, which pymilvus works around)
        for name in ("pymilvus", "pymilvus.milvus_client", "milvus_lite", "grpc._server"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        deadline = time.monotonic() + self.lock_wait_s
        tries = 0
        while True:
            if self.is_lite:
                self._check_lite_folder(deadline)
            try:
                self.client = MilvusClient(self.uri, token=self.cfg.token, timeout=self.cfg.timeout_s)
                break
            except Exception as e:  # noqa: BLE001  (connection errors come in several types)
                if not self.is_lite:
                    raise StoreError(f"cannot connect to Milvus at {self.uri}: {_reason(e)}. Is the server up "
                                     "and the token right? The library's Parquet is untouched.") from e
                tries += 1
                pid = lite.lock_holder(self.uri)
                # free now, yet it failed: damaged, unless it failed on another process's passing
                # probe of the lock (lock_holder takes it for a moment): that one does not repeat
                if pid is None and tries >= 3:
                    raise self.damaged(f"Milvus Lite cannot open it: {_reason(e)}") from e
                if pid is not None and time.monotonic() >= deadline:    # taken since the check
                    raise StoreBusy(f"{self.uri} is in use by {lite.describe_pid(pid)}", pid) from e
                time.sleep(0.05)
        if self.is_lite:
            lite.opened(self.uri)

    def _check_lite_folder(self, deadline: float) -> None:
        path = Path(self.uri)
        if path.exists() and not path.is_dir():
            raise self.damaged("it is a file, not a Milvus Lite folder")
        if not path.parent.is_dir():
            raise StoreError(f"cannot open Milvus Lite at {path}: folder {path.parent} does not exist")
        pid = lite.wait_until_free(path, max(0.0, deadline - time.monotonic()), self.notify)
        if pid is not None:
            raise StoreBusy(f"{path} is in use by {lite.describe_pid(pid)}: Milvus Lite admits one process at a "
                            f"time (waited {self.lock_wait_s:g} s, milvus.lock_wait_s). Rerun when it is done, "
                            "or serve the index from a Milvus server (--milvus-uri) to share it.", pid)

    def damaged(self, why: str) -> StoreDamaged:
        return StoreDamaged(f"the Milvus Lite store {self.uri} is damaged ({why}). The library's Parquet is "
                            f"intact: `recap index {shlex.quote(str(self.lib_root))} --repair` rebuilds the store from it.", why)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if self.is_lite and (code := no_space_errno(e)):
                # not damage: removing the store to rebuild it would need the room that is missing
                raise StoreFull(f"cannot write the Milvus Lite store {self.uri}: {os.strerror(code)} (it failed to "
                                f"{what}; the store is kept). Free space (or move the library), then rerun `recap "
                                f"index {shlex.quote(str(self.lib_root))}`: it syncs the store from Parquet.") from e
            if self.is_lite:
                raise self.damaged(f"failed to {what}: {_reason(e)}") from e
            raise StoreError(f"Milvus at {self.uri} failed to {what}: {_reason(e)}") from e

    # ---- schema ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the collection exists; loads it if so (a collection opened by a new process is
        released, and a released collection refuses search and query). Once found and loaded it is
        not asked again (one round trip less per search); `drop` and `create` forget it."""
        if self._loaded:
            return True
        found = bool(self._call("list collections", self.client.has_collection, self.collection))
        if found:
            self._call("load the collection", self.client.load_collection, self.collection)
            self._loaded = True
        return found

    def describe(self) -> dict[str, Any]:
        """field name -> (type name, dim or None) of the existing collection."""
        return {f["name"]: (f["type"].name, f.get("params", {}).get("dim")) for f in self.fields()}

    def wanted(self, scalars: list[ScalarSpec], vectors: dict[str, int]) -> dict[str, Any]:
        """The description `describe()` returns for a collection made by `create(scalars, vectors)`."""
        types = {"int": "INT64", "float": "DOUBLE", "string": "VARCHAR", "bool": "BOOL"}
        out: dict[str, Any] = {PK: ("VARCHAR", None), ROW_HASH: ("VARCHAR", None)}
        out.update({s.name: (types[s.kind], None) for s in scalars})
        for name, dim in vectors.items():
            out[has_field(name)] = ("BOOL", None)
            out[vector_field(name)] = ("FLOAT_VECTOR", dim)
        return out

    def create(self, scalars: list[ScalarSpec], vectors: dict[str, int]) -> None:
        # lazy: pymilvus takes ~0.8 s to import; only store operations need it
        from pymilvus import DataType

        types = {"int": DataType.INT64, "float": DataType.DOUBLE, "string": DataType.VARCHAR, "bool": DataType.BOOL}
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK, DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field(ROW_HASH, DataType.VARCHAR, max_length=64)
        for s in scalars:
            extra = {"max_length": VARCHAR_MAX.get(s.name, 1024)} if s.kind == "string" else {}
            schema.add_field(s.name, types[s.kind], nullable=True, **extra)
        index = self.client.prepare_index_params()
        params = {k: v for k, v in self.cfg.index_params.items() if k in INDEX_PARAM_KEYS.get(self.index_type, ())}
        for name, dim in vectors.items():
            schema.add_field(has_field(name), DataType.BOOL)
            schema.add_field(vector_field(name), DataType.FLOAT_VECTOR, dim=dim, nullable=True)
            index.add_index(field_name=vector_field(name), index_type=self.index_type, metric_type="COSINE",
                            params=params)
        self._fields = None
        self._loaded = False
        self._call("create the collection", self.client.create_collection, self.collection, schema=schema,
                   index_params=index)

    def drop(self) -> None:
        if self.exists():
            self._call("drop the collection", self.client.drop_collection, self.collection)
        self._fields = None
        self._loaded = False

    # ---- writing --------------------------------------------------------------------------------
    def upsert(self, rows: list[dict[str, Any]]) -> int:
        """Insert or replace rows by clip_id (idempotent)."""
        n = 0
        for i in range(0, len(rows), self.cfg.batch_rows):
            batch = rows[i:i + self.cfg.batch_rows]
            n += self._call("upsert", self.client.upsert, self.collection, batch)["upsert_count"]
        return n

    def insert(self, rows: list[dict[str, Any]]) -> int:
        """Plain insert, ~1.6x faster than upsert: only for rows known to be absent (a new collection)."""
        n = 0
        for i in range(0, len(rows), self.cfg.batch_rows):
            batch = rows[i:i + self.cfg.batch_rows]
            n += self._call("insert", self.client.insert, self.collection, batch)["insert_count"]
        return n

    def write(self, batch: RowBatch, replace: bool) -> int:
        """One batch of rows built column-wise (`index.rows`), as one request: an insert into a new
        collection, else an upsert (`replace`). The request is made here from the Arrow and NumPy
        columns; pymilvus' own path turns every row dict into fields value by value (~30% of the
        time of a Lite build)."""
        send = self._sender(replace)
        if send is None:                 # a pymilvus without the columnar entry point: rows it is
            rows = rows_of(batch, self.fields())
            return self.upsert(rows) if replace else self.insert(rows)
        # lazy: pymilvus takes ~0.8 s to import; only store operations need it
        from pymilvus.grpc_gen import milvus_pb2

        request = (milvus_pb2.UpsertRequest if replace else milvus_pb2.InsertRequest)(
            collection_name=self.collection, num_rows=len(batch))
        request.fields_data.extend(field_data(f, column_of(batch, f)) for f in self.fields())
        res = self._call("upsert" if replace else "insert", send, request)
        return res.upsert_count if replace else res.insert_count

    def _sender(self, replace: bool) -> Callable[[Any], Any] | None:
        """A call sending a prepared Insert/Upsert request, through pymilvus' connection handler (the
        path its ORM takes with `insert_param`); None when this pymilvus lacks it."""
        try:
            conn = self.client._get_connection()
            context = self.client._generate_call_context()
            method = conn.upsert if replace else conn.batch_insert
        except AttributeError:
            return None
        info = {"fields": self.fields()}
        key = "upsert_param" if replace else "insert_param"
        # no deadline, as pymilvus' own insert: a batch that fills Lite's memtable flushes it (seconds)
        return lambda request: method(self.collection, [], timeout=None, context=context, schema=info,
                                      **{key: request})

    def fields(self) -> list[dict[str, Any]]:
        """The collection's fields as Milvus describes them (name, type, nullable, params)."""
        if self._fields is None:
            info = self._call("describe the collection", self.client.describe_collection, self.collection)
            self._fields = info["fields"]
        return self._fields

    def delete(self, ids: list[str]) -> int:
        n = 0
        for i in range(0, len(ids), self.cfg.batch_rows):
            res = self._call("delete", self.client.delete, self.collection, ids=ids[i:i + self.cfg.batch_rows])
            n += res.get("delete_count", 0) if isinstance(res, dict) else len(ids[i:i + self.cfg.batch_rows])
        return n

    def flush(self) -> None:
        self._call("flush", self.client.flush, self.collection)

    # ---- reading --------------------------------------------------------------------------------
    def row_hashes(self) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        """clip_id and row_hash of every row in the collection (Arrow, a few bytes per row)."""
        # pymilvus' largest batch: it builds a dict per row, and fewer, larger batches read 100k rows
        # in 8.8 s instead of 15 s (batches of 4,000)
        it = self._call("read the collection", self.client.query_iterator, self.collection, batch_size=16384,
                        output_fields=[PK, ROW_HASH])
        ids: list[pa.Array] = []
        hashes: list[pa.Array] = []
        while True:
            batch = self._call("read the collection", it.next)
            if not batch:
                it.close()
                return pa.chunked_array(ids, pa.string()), pa.chunked_array(hashes, pa.string())
            ids.append(pa.array([r[PK] for r in batch], pa.string()))
            hashes.append(pa.array([r[ROW_HASH] for r in batch], pa.string()))

    def get(self, ids: Iterable[str], fields: list[str]) -> list[dict[str, Any]]:
        return self._call("get rows", self.client.get, self.collection, ids=list(ids), output_fields=fields)

    def search_params(self) -> dict[str, Any]:
        keys = SEARCH_PARAM_KEYS.get(self.index_type, ())
        return {"metric_type": "COSINE", "params": {k: v for k, v in self.cfg.search_params.items() if k in keys}}

    def search(self, embedder: str, queries: list[list[float]], limit: int, expr: str,
               output_fields: list[str]) -> list[list[dict[str, Any]]]:
        expr = _and(f"({has_field(embedder)} == true)", expr)
        return self._call("search", self.client.search, self.collection, data=queries, anns_field=vector_field(embedder),
                          limit=limit, filter=expr, output_fields=output_fields, search_params=self.search_params())

    def hybrid(self, queries: dict[str, list[list[float]]], limit: int, expr: str, output_fields: list[str],
               rrf_k: int) -> list[list[dict[str, Any]]]:
        """Reciprocal-rank fusion of one search per vector field (Milvus hybrid search), for each
        query: `queries` holds the same number of vectors per field, one hit list comes back per query."""
        # lazy: pymilvus takes ~0.8 s to import; only store operations need it
        from pymilvus import AnnSearchRequest, RRFRanker

        reqs = [AnnSearchRequest(qs, vector_field(name), self.search_params(), limit=limit,
                                 expr=_and(f"({has_field(name)} == true)", expr))
                for name, qs in queries.items()]
        res = self._call("run a hybrid search", self.client.hybrid_search, self.collection, reqs,
                         RRFRanker(rrf_k), limit=limit, output_fields=output_fields)
        return [list(hits) for hits in res]

    def sync_token(self) -> str | None:
        """The token of the last sync that finished writing this collection (see index/ledger.py)."""
        info = self._call("describe the collection", self.client.describe_collection, self.collection)
        return (info.get("properties") or {}).get(TOKEN_PROPERTY)

    def set_sync_token(self, token: str) -> bool:
        """Whether the collection now carries `token`. A server that cannot hold collection
        properties (older Milvus) says no: its syncs are then read back every time, as before."""
        try:
            self.client.alter_collection_properties(self.collection, properties={TOKEN_PROPERTY: token})
            return True
        except Exception:  # noqa: BLE001  (whatever the server's reason, the ledger is just not believed)
            return False

    def count(self) -> int:
        res = self._call("count rows", self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is None:
            return
        self.client = None
        try:
            client.close()
        except Exception:  # noqa: BLE001  (closing a dead connection is not an error worth raising)
            pass
        if self.is_lite:
            lite.closed(self.uri)


def column_of(batch: RowBatch, f: dict[str, Any]) -> Any:
    """The values of field `f` in a row batch: an Arrow array, or (vectors, present) for a vector."""
    name = f["name"]
    if name == PK:
        return batch.ids
    if name == ROW_HASH:
        return pa.array(batch.hashes, pa.string())
    if name.startswith("has_") and name[4:] in batch.vectors:
        return pa.array(batch.vectors[name[4:]][1])
    if name.endswith("_vec") and name[:-4] in batch.vectors:
        return batch.vectors[name[:-4]]
    return batch.scalars[name]


def field_data(f: dict[str, Any], values: Any) -> Any:
    """One field of a request, column-wise. Nullable fields send only their non-null values beside a
    validity mask (what pymilvus sends and Milvus expects)."""
    # lazy: pymilvus takes ~0.8 s to import; only store operations need it
    from pymilvus.grpc_gen import schema_pb2

    kind = f["type"].name
    fd = schema_pb2.FieldData(type=int(f["type"]), field_name=f["name"])
    nullable = f.get("nullable", False)
    if kind == "FLOAT_VECTOR":
        vectors, present = values
        fd.vectors.dim = f["params"]["dim"]
        if nullable:
            fd.valid_data.extend(present.tolist())
            vectors = vectors[present]
        raw = np.ascontiguousarray(vectors, np.float32).tobytes()
        # the packed `repeated float data = 1` parsed from its wire bytes: a copy, not a Python float
        # per element (what `data.extend` would make)
        fd.vectors.float_vector.SetInParent()
        fd.vectors.float_vector.MergeFromString(b"\x0a" + _varint(len(raw)) + raw)
        return fd
    if nullable:
        fd.valid_data.extend(values.is_valid().to_pylist())
        values = values.drop_null()
    slot, arrow_type = SCALAR_SLOTS[kind]
    getattr(fd.scalars, slot).data.extend(values.cast(arrow_type).to_pylist())
    return fd


def rows_of(batch: RowBatch, fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row batch as row dicts (for a pymilvus without the columnar path)."""
    cols = {}
    for f in fields:
        values = column_of(batch, f)
        if f["type"].name == "FLOAT_VECTOR":
            vectors, present = values
            cols[f["name"]] = [v.tolist() if p else None for v, p in zip(vectors, present)]
        else:
            cols[f["name"]] = values.to_pylist()
    return [dict(zip(cols, values)) for values in zip(*cols.values())]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _and(a: str, b: str) -> str:
    return f"{a} and ({b})" if b else a


def _reason(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return msg.splitlines()[0] if msg else type(e).__name__
