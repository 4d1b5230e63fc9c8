"""Ingest: raw videos in, committed clip rows (and clip files) out.

    sources.py    what to ingest: files, folders, globs, manifests, fsspec URLs; the staging cache
    probe.py      container and stream facts, before decoding
    decode.py     the single decode pass, feeding every frame analyzer (analysis.py)
    shots.py      shot boundaries: cuts, fades, dissolves, black
    signals/      clip quality signals measured in the same pass
    plan.py       shots -> clip ranges
    clipfiles.py  clip files: remux or frame-exact encode
    worker.py     all of the above for one source, Ray-free (result.py: what it returns)
    sandbox.py    runs each source in a child process within its time and CPU budget
    stage.py      IngestStage: one source per task, handed to the worker's sandbox
    job.py        the ingest job: checks, IngestStage on the stage runner, the driver's commits
"""
