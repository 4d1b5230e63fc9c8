"""The CLI documents itself and the README stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from index.catalog import fields_for_schema
from index.where import compile_where
from pipeline.caption.config import CaptionJobConfig
from pipeline.cli import COMMANDS, build_parser
from pipeline.embed import IndexJobConfig
from pipeline.export.buckets import BucketConfig
from pipeline.export.config import ExportConfig
from pipeline.filters.config import FilterConfig
from pipeline.ingest.config import IngestConfig
from pipeline.library.schema import CLIP_COLUMNS, VIEW_COLUMNS, markdown_reference, schema_of
from trainer.train import JOB_CONFIGS
from trainer.typedconfig import from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_readme_column_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- schema:begin[^\n]*-->\n(.*?)<!-- schema:end -->", readme, flags=re.S)
    assert block, "README lost its schema markers"
    assert block.group(1).strip() == markdown_reference().strip(), \
        "README column reference is stale: run `python -m pipeline.library --update-readme`"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert sub.description, f"recap {command} has no description"
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"recap {command}: option {action.option_strings or action.dest} has no help"


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert f"recap {command}" in readme, f"README does not mention `recap {command}`"


# repository files named in the docs, the configs' comments, the --help texts and code comments
REPO_PATH = re.compile(r"\b(?:pipeline|trainer|index|captioner|bench|tests|configs|docs)/[\w./-]*\w"
                       r"\.(?:py|sh|yaml|png|txt|md|json)\b")
NOT_OURS = {"docs/Report-v1.3.0.md", "docs/report_03.md",   # files of Open-Sora(-Plan), cited in configs/filters.yaml
            "bench/out/shots_head.py"}                       # written by the command that names it


def test_files_the_docs_name_exist() -> None:
    texts = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"),
             *(ROOT / "configs").glob("*.yaml")]
    for package in ("pipeline", "trainer", "index", "captioner", "bench", "tests"):
        texts += [p for p in (ROOT / package).rglob("*") if p.suffix in (".py", ".sh")]
    missing = sorted({f"{path.relative_to(ROOT)}: {name}" for path in texts
                      for name in REPO_PATH.findall(path.read_text(errors="replace"))
                      if name not in NOT_OURS and not re.search(r"/[A-Z_]+\.\w+$", name)   # a placeholder
                      and not (ROOT / name).exists()})
    assert not missing, "files named that do not exist:\n" + "\n".join(missing)


def _differences(shipped: object, builtin: object, path: str = "") -> set[str]:
    """Keys whose value differs, and entries of a mapping the YAML has and the built-in lacks (a
    default rule or embedder the Python API would not have); keys the YAML leaves out are fine."""
    if isinstance(shipped, dict) and isinstance(builtin, dict):
        return {d for k in shipped for d in (_differences(shipped[k], builtin[k], f"{path}{k}.") if k in builtin
                                             else {f"{path}{k}"})}
    return set() if shipped == builtin else {path.rstrip(".")}


# the job configs whose dataclasses a Python caller (or a partial file) gets, and their YAML
BUILTIN_VS_YAML = {"ingest": IngestConfig, "filters": FilterConfig, "captioner": CaptionJobConfig,
                   "index": IndexJobConfig, "export": ExportConfig, "buckets": BucketConfig}


@pytest.mark.parametrize("kind", sorted(BUILTIN_VS_YAML))
def test_job_config_defaults_are_the_yaml(kind: str) -> None:
    """The CLI starts from configs/<kind>.yaml, the Python API (IngestConfig() ...) and a bucket
    file from the dataclass defaults: they were different jobs (ingest and export on Ray instead of
    `auto`, no filter rules, no embedders, no Milvus index parameters)."""
    builtin = to_dict(from_dict(BUILTIN_VS_YAML[kind], {}))
    shipped = yaml.safe_load((ROOT / "configs" / f"{kind}.yaml").read_text())
    assert _differences(shipped, builtin) == set(), f"configs/{kind}.yaml and its dataclass defaults differ"


@pytest.mark.parametrize("kind, documented", [("dit", {"vae.kind", "vae.path", "model.pooled_text"}),
                                              ("vae", {"data.batch_size", "train.ema_decay"})])
def test_train_builtin_defaults_differ_from_the_yaml_only_where_the_readme_says(kind: str, documented: set) -> None:
    """`recap train --config FILE` replaces configs/<kind>.yaml; the README names where the built-in
    defaults that fill a partial file differ from it."""
    builtin = to_dict(from_dict(JOB_CONFIGS[kind], {}))
    shipped = yaml.safe_load((ROOT / "configs" / f"{kind}.yaml").read_text())
    assert _differences(shipped, builtin) == documented, "update the README's Configuration section"


def _help_texts() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    return {f"recap {name} --help": p.format_help() for name, p in sub.items()}


def test_where_examples_in_the_docs_fit_a_library() -> None:
    """Every --where the README, docs/ and the --help texts show parses and names fields a library has."""
    schema = pa.unify_schemas([schema_of(CLIP_COLUMNS), schema_of(VIEW_COLUMNS), pa.schema(
        [("source", pa.string()), ("caption", pa.string()), ("caption_version", pa.string())])])
    fields = fields_for_schema(schema)
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    texts.update(_help_texts())
    examples = [(where, text) for where, text in texts.items()
                for text in re.findall(r"(?:--where|e\.g\.) '([^']*)'", text)
                + re.findall(r"`(\w+ (?:==|!=|<=|>=|<|>|in|is) [^`]*)`", text) if "..." not in text]
    assert len(examples) >= 8
    for where, text in examples:
        compile_where(text, fields)          # raises WhereError naming the token
