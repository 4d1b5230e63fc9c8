"""The stage model (base.py), the `execution` config (execution.py) and the runner (runner.py).

Import from those modules: this one loads nothing, so that the ingest config, which needs
`execution` alone, does not load the runner with it (the ingest child reads that config)."""
