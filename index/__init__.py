"""recap index: clip embeddings in Milvus, semantic search, the `--where` filter language.

`index.Library(path)` is the Python API (see index/api.py); `index.where` the filter language.
"""


def __getattr__(name: str):
    # keep `import index.where` light: the API (pyarrow, numpy, Milvus client) loads on first use
    if name in ("Library", "Hit", "Reconcile", "SearchError"):
        from index import api

        return getattr(api, name)
    raise AttributeError(name)
