"""recap index: clip embeddings in Milvus, semantic search, the `--where` filter language.

`index.api.ClipIndex(path, config)` is the Python API; `index.where` the filter language.
"""
