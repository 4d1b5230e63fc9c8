"""A user's mistakes end in one clear line and exit 2, and write nothing; a closed pipe is not an error."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.conftest import ROOT


@pytest.mark.parametrize("argv", [
    ["info", "{lib}"], ["filter", "{lib}"], ["report", "{lib}"], ["caption", "{lib}", "--backend", "signals"],
    ["index", "{lib}"], ["search", "{lib}", "a dog"], ["export", "{lib}", "--out", "{tmp}/shards"],
])
def test_commands_on_a_folder_that_is_not_a_library(tmp_path: Path, capsys, argv: list[str]):
    lib = tmp_path / "nolib"
    assert main([a.format(lib=lib, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a recap library" in err[0] and err[0].startswith(f"recap {argv[0]}: error:")
    assert not lib.exists() and not (tmp_path / "shards").exists()      # nothing written, e.g. no report folder


@pytest.mark.parametrize("command", ["info", "export", "ingest"])
def test_an_unknown_option_is_named_with_its_commands_usage(tmp_path: Path, capsys, command: str):
    with pytest.raises(SystemExit) as done:
        out = ["--out", str(tmp_path / "out")] if command in ("export", "ingest") else []
        main([command, str(tmp_path), "--no-such-option", *out])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"usage: recap {command} " in err
    assert err.strip().splitlines()[-1] == f"recap {command}: error: unrecognized arguments: --no-such-option"


@pytest.mark.parametrize("argv", [["caption", "{lib}", "--backend", "signals", "--all"],
                                  ["export", "{lib}", "--out", "{tmp}/shards"]])
def test_a_bad_where_is_said_the_same_way_by_every_command(tmp_path: Path, capsys, argv: list[str]):
    from tests.index_fixtures import make_library

    lib = make_library(tmp_path / "lib")
    assert main([a.format(lib=lib, tmp=tmp_path) for a in argv] + ["--where", "bogus > 1"]) == 2
    err = capsys.readouterr().err
    assert f"recap {argv[0]}: error: --where: unknown field 'bogus'" in err and "^" in err


def test_a_closed_pipe_ends_quietly(tmp_path: Path):
    from tests.index_fixtures import make_library

    lib = make_library(tmp_path / "lib")
    read, write = os.pipe()
    os.close(read)                                  # `recap info LIB | head` after head has gone
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "info", str(lib)], stdout=write,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    os.close(write)
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == "recap 0.1.0"


def test_version_from_a_source_tree(monkeypatch, capsys):
    """`python -m pipeline.cli` from a checkout that pip never installed (a GPU machine running the
    bench scripts over a copy of the tree) has no package metadata: every command still parses."""
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "not installed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
