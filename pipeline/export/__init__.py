"""The export job: selected clips -> bucketed, re-encoded WebDataset shards with a manifest and a
dataset card (selection.py -> plan.py -> writer.py on the stage runner -> card.py, driven by job.py)."""
