"""Filters as a view: thresholds on the stored signals and pHash near-duplicates, evaluated without
decoding (evaluate.py, near_duplicates.py), and the HTML report of what they did (report.py)."""
