"""recap index: clip embeddings in Milvus, semantic search, the `--where` filter language.

`index.api.ClipIndex(path, config)` is the Python API; `index.where` the filter language (fields in
`index.catalog`); `index.store` the Milvus collection and `index.lite` the Milvus Lite folder (its
lock, its removal for a rebuild); `index.exact` Lite's fast path, an exact scan of the Parquet
vectors; `index.embedders` the models (`index.minilm`: the bundled query encoder in NumPy).
"""
