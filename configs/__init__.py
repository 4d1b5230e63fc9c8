"""recap's default configs: one YAML file per job kind, and the caption prompt templates.

This folder is both the user-facing copy (copy a file, edit it, pass it with `--config`) and the
package data every job loads its defaults from (`importlib.resources`), so a wheel install works.
"""
