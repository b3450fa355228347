"""Launch ``spacy_xlmrxl.distributed.ddp`` as the tests do: one process, or torchrun with N ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[3]


def toy_ner_docbin(vocab, rng, n: int, names: Mapping[str, str], filler: Sequence[str], length: Sequence[int]):
    """A DocBin of ``n`` docs of filler words (``length``: (min, max) words, inclusive), each with
    one single-word entity from ``names`` at a random position."""
    from spacy.tokens import Doc, DocBin, Span

    docs = DocBin()
    for _ in range(n):
        size = length[0] if length[0] == length[1] else rng.randint(*length)
        words = [rng.choice(filler) for _ in range(size)]
        k, name = rng.randrange(len(words)), rng.choice(list(names))
        words[k] = name
        doc = Doc(vocab, words=words)
        doc.ents = [Span(doc, k, k + 1, label=names[name])]
        docs.add(doc)
    return docs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_training(args: Sequence[str], out: Path, nproc: int, *, timeout: int = 300,
                 env: Dict[str, str] = {}) -> List[dict]:
    """Run ``python -m spacy_xlmrxl.distributed.ddp *args`` (under torchrun when ``nproc`` > 1)
    from the repository root; the lines of ``out/train_log.jsonl``."""
    module = ["-m", "spacy_xlmrxl.distributed.ddp", *args]
    if nproc == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *module]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                    **env)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
