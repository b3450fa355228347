"""``spacy-xlmrxl.keep_freed_memory.v1``: large buffers are reused instead of page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import spacy
from spacy.util import registry

from spacy_xlmrxl.training.cpu_memory import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# allocate and free a 64 MB tensor ten times; print the minor page faults of the loop
_PROBE = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from spacy_xlmrxl.training.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
torch.zeros(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(16 * 1024 * 1024)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def test_callback_is_registered_and_returns_the_pipeline():
    nlp = spacy.blank("xx")
    callback = registry.callbacks.get("spacy-xlmrxl.keep_freed_memory.v1")()
    assert callback(nlp) is nlp


@pytest.mark.skipif(not GLIBC, reason="the allocator tuning applies to glibc only")
def test_large_buffers_are_reused_instead_of_faulted_in_again():
    plain, tuned = _faults("plain"), _faults("tuned")
    # 10 x 64 MB = 163840 pages: without the tuning nearly every page faults each time; with it
    # only the first buffer does (about a tenth)
    assert plain > 100_000, plain
    assert tuned < plain / 4, (tuned, plain)


@pytest.mark.skipif(GLIBC, reason="only elsewhere is it a no-op")
def test_no_op_without_glibc():
    assert keep_freed_memory() is False
