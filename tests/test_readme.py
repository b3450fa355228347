"""The README's usage examples run as written (from the repository root)."""

import re
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, SHARED_REASON, SPM_MODEL

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(encoding="utf8"), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    if not SPM_MODEL.is_file():
        pytest.skip(SHARED_REASON)
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
