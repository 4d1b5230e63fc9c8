"""Synthetic video corpora with known ground truth: the shot-boundary corpus (corpus.py, rendered by
synth.py) and the semantic corpus of coloured squares for prompt following (semantic.py)."""
