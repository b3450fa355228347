"""HF transformers' own XLM-RoBERTa-XL test suite, run against `modeling`: pass / fail / skip counts.

Owns fetching (or taking from a folder) HF's test file
``tests/models/xlm_roberta_xl/test_modeling_xlm_roberta_xl.py`` with the mixins it imports
(``tests/test_modeling_common.py``, ``tests/test_configuration_common.py``,
``tests/test_pipeline_mixin.py``, ``tests/generation/test_utils.py``, ``tests/pipelines/``),
copying them into a temporary folder outside the repository, rewriting only the model imports of
the model test file to `modeling`, running pytest there and printing its counts. Nothing of HF's
test code is kept in the repository. Not run by CI or by the tests.

    python bench/hf_test_suite.py                          # fetch tag v4.53.2 from GitHub (network)
    python bench/hf_test_suite.py --source DIR             # DIR holds transformers' tests/ tree
    python bench/hf_test_suite.py --source A --source B    # B's files replace A's (e.g. an sdist's tests/*.py)
    python bench/hf_test_suite.py --source DIR --reference # the same harness on HF's own classes
    python bench/hf_test_suite.py --source DIR --failures  # also list each failing test with its error line
    python bench/hf_test_suite.py --source DIR -- -k test_config    # extra arguments go to pytest

``DIR`` may be a transformers checkout, an unpacked sdist or archive (its top folder holding
``tests/``), or a ``.tar.gz`` of one. The last line is ``SUMMARY passed=P failed=F skipped=S ...``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
TAG = "v4.53.2"
ARCHIVE_URL = "https://codeload.github.com/huggingface/transformers/tar.gz/refs/tags/{tag}"
MODEL_TEST = "tests/models/xlm_roberta_xl/test_modeling_xlm_roberta_xl.py"
# what the model test file needs: the package markers, the top-level mixins, the generation and
# pipeline mixins (imported by tests/test_pipeline_mixin.py), the config fixture of
# tests/test_configuration_common.py (with the custom config it imports from utils/test_module/),
# the pipeline mixin's tiny-model list, and the model folder itself
NEEDED = (re.compile(r"^tests/[^/]+\.py$"), re.compile(r"^tests/(generation|pipelines)/[^/]+\.py$"),
          re.compile(r"^tests/utils/(__init__\.py|test_configuration_utils\.py|tiny_model_summary\.json)$"),
          re.compile(r"^utils/test_module/[^/]+\.py$"),
          re.compile(r"^tests/models/__init__\.py$"), re.compile(r"^tests/models/xlm_roberta_xl/[^/]+\.py$"))
# modules of transformers whose XLM-RoBERTa-XL names `modeling` provides under the same names
MODEL_MODULES = ("transformers", "transformers.models.xlm_roberta_xl",
                 "transformers.models.xlm_roberta_xl.modeling_xlm_roberta_xl",
                 "transformers.models.xlm_roberta_xl.configuration_xlm_roberta_xl")
MODEL_NAMES = re.compile(r"^(XLMRobertaXL\w*|create_position_ids_from_input_ids)$")


def needed(path: str) -> bool:
    return any(pattern.match(path) for pattern in NEEDED)


def _strip_top(name: str) -> Optional[str]:
    """``transformers-4.53.2/tests/x.py`` -> ``tests/x.py`` (None outside ``tests/`` and ``utils/``)."""
    parts = name.split("/")
    for start in range(min(2, len(parts))):
        if parts[start] in ("tests", "utils"):
            return "/".join(parts[start:])
    return None


def extract_archive(stream: io.BufferedIOBase, target: Path) -> int:
    """Copy the needed files of a (streamed) ``.tar.gz`` of transformers into ``target``."""
    count = 0
    with tarfile.open(fileobj=stream, mode="r|gz") as archive:
        for member in archive:
            path = _strip_top(member.name)
            if not member.isfile() or path is None or not needed(path):
                continue
            data = archive.extractfile(member)
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data.read() if data is not None else b"")
            count += 1
    return count


def copy_folder(source: Path, target: Path) -> int:
    """Copy the needed files of an unpacked transformers tree into ``target``."""
    root = source if (source / "tests").is_dir() else next((p for p in source.iterdir() if (p / "tests").is_dir()), None)
    if root is None:
        raise SystemExit(f"--source {source}: no tests/ folder in it or in a folder directly below it")
    count = 0
    files = [*(root / "tests").rglob("*.py"), *(root / "tests").rglob("*.json"), *(root / "utils").glob("test_module/*.py")]
    for file in files:
        path = file.relative_to(root).as_posix()
        if needed(path):
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, destination)
            count += 1
    return count


def gather(sources: Sequence[str], target: Path) -> None:
    """Fill ``target`` with the test files, from ``sources`` in order or, without any, from GitHub."""
    if not sources:
        url = ARCHIVE_URL.format(tag=TAG)
        print(f"fetching {url} (only tests/ files are kept)", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                count = extract_archive(response, target)
        except OSError as err:
            raise SystemExit(f"cannot fetch {url}: {err}; give a folder with transformers' tests/ as --source") from err
        print(f"  {count} files")
        return
    for source in sources:
        path = Path(source)
        if path.is_file():
            with path.open("rb") as handle:
                count = extract_archive(handle, target)
        elif path.is_dir():
            count = copy_folder(path, target)
        else:
            raise SystemExit(f"--source {source}: no such file or folder")
        print(f"{source}: {count} files")
    if not (target / MODEL_TEST).is_file():
        raise SystemExit(f"the sources hold no {MODEL_TEST}")


def rewrite_model_imports(text: str) -> str:
    """Import the XLM-RoBERTa-XL names (``XLMRobertaXL*``, ``create_position_ids_from_input_ids``)
    from `modeling` instead of transformers; every other import and line stays as it is."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.module not in MODEL_MODULES:
            continue
        ours = [a for a in node.names if MODEL_NAMES.match(a.name)]
        if not ours:
            continue
        rest = [a for a in node.names if not MODEL_NAMES.match(a.name)]
        indent = " " * node.col_offset
        spell = lambda names: ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in names)  # noqa: E731
        new = f"{indent}from modeling import {spell(ours)}\n"
        if rest:
            new = f"{indent}from {node.module} import {spell(rest)}\n" + new
        edits.append((node.lineno, node.end_lineno, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start - 1:end] = [new]
    return "".join(lines)


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


# what HF's test files import beyond transformers' own dependencies
TEST_DEPENDENCIES = ("parameterized", "datasets", "pytest")


def check_dependencies() -> None:
    missing = [name for name in TEST_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"HF's test files need {', '.join(missing)}: install them (e.g. pip install --target DIR "
                         f"{' '.join(missing)}, then PYTHONPATH=DIR)")


def link_installed_transformers(root: Path) -> None:
    """HF's pipeline mixin imports ``src/transformers`` of the checkout: point it at the installed one."""
    import transformers

    (root / "src").mkdir(exist_ok=True)
    link = root / "src" / "transformers"
    if not link.exists():
        link.symlink_to(Path(transformers.__file__).parent, target_is_directory=True)


def run_pytest(root: Path, *, extra: Sequence[str], failures: bool) -> Dict[str, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("HF_HUB_OFFLINE", "1")  # the suite's few hub tests skip or fail rather than download
    report = ["-rfE", "--tb=line"] if failures else ["--tb=no"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *report, MODEL_TEST, *extra]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    tail = output.strip().splitlines()
    if failures:
        print("\n".join(line for line in tail if line.startswith(("FAILED", "ERROR"))))
    last = next((line for line in reversed(tail) if SUMMARY.search(line)), "")
    if not last:
        print(output[-4000:])
        raise SystemExit(f"pytest gave no summary (exit code {result.returncode})")
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in SUMMARY.findall(last)}
    print(last)
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", default=[],
                        help="folder or .tar.gz holding transformers' tests/ (repeatable; later ones win)")
    parser.add_argument("--reference", action="store_true", help="run HF's own classes (no import rewrite)")
    parser.add_argument("--failures", action="store_true", help="list failing tests with their error line")
    parser.add_argument("--keep", help="build the harness in this folder (kept) instead of a temporary one")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hf-xlmrxl-tests-") as scratch:
        root = Path(args.keep) if args.keep else Path(scratch)
        if root.resolve().is_relative_to(REPO):
            raise SystemExit("--keep must lie outside the repository (HF's test files are not vendored)")
        shutil.rmtree(root / "tests", ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        check_dependencies()
        gather(args.source, root)
        link_installed_transformers(root)
        model_test = root / MODEL_TEST
        if not args.reference:
            model_test.write_text(rewrite_model_imports(model_test.read_text(encoding="utf8")), encoding="utf8")
        print(f"classes: {'HF transformers (reference)' if args.reference else 'modeling'}", flush=True)
        counts = run_pytest(root, extra=args.pytest_args, failures=args.failures)
    print("SUMMARY " + " ".join(f"{k}={counts.get(k, 0)}" for k in ("passed", "failed", "skipped", "error"))
          + f" classes={'hf' if args.reference else 'modeling'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
