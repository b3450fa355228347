"""Data checksums: verify the project's assets and fetch them from a local data folder.

Owns: reading the asset list of ``project.yml`` (each asset's ``dest``, weasel's md5
``checksum`` and our ``sha256``, which may list several accepted values, e.g. the official and
the rebuilt XLM-R ``sentencepiece.bpe.model``), reading ``SHA256SUMS`` files, and
`check_assets`: every asset under ``assets/`` is checked against its sha256; a missing (or
wrong) one is copied from a local data folder (``<data_dir>/<path under assets/>``, e.g.
``../shared/data/ner/uner/da/train.iob2`` for ``assets/ner/uner/da/train.iob2``) after the
source is verified too. Machines without internet use this instead of ``spacy project assets``.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import srsly

PathLike = Union[str, Path]
ASSETS_DIR = "assets"
_CHUNK = 1 << 20


class DataCheckError(ValueError):
    """The asset list or a checksum file is malformed; the message names the file and entry."""


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class AssetSpec:
    """One data file of the project: where it goes, where it comes from, its accepted hashes."""

    dest: str
    sha256: Tuple[str, ...]
    md5: Optional[str] = None
    url: Optional[str] = None

    @property
    def relative(self) -> Path:
        """The path under ``assets/`` (also the path under a local data folder)."""
        dest = Path(self.dest)
        if dest.parts and dest.parts[0] == ASSETS_DIR:
            return Path(*dest.parts[1:])
        return dest


def load_asset_specs(project_file: PathLike) -> List[AssetSpec]:
    """The assets of a ``project.yml`` (raw YAML; ``dest`` values must not use variables)."""
    project_file = Path(project_file)
    config = srsly.read_yaml(project_file)
    specs: List[AssetSpec] = []
    for i, asset in enumerate(config.get("assets", []) or []):
        where = f"{project_file}: assets[{i}]"
        if not isinstance(asset, dict) or not isinstance(asset.get("dest"), str):
            raise DataCheckError(f"{where}: needs a 'dest' path")
        sha256 = asset.get("sha256")
        hashes = [sha256] if isinstance(sha256, str) else list(sha256 or [])
        if not hashes or not all(isinstance(h, str) and len(h) == 64 for h in hashes):
            raise DataCheckError(f"{where} ({asset['dest']}): needs 'sha256' (a 64-digit hex string or a list of them)")
        specs.append(AssetSpec(asset["dest"], tuple(h.lower() for h in hashes), asset.get("checksum"), asset.get("url")))
    return specs


def read_sha256sums(path: PathLike) -> Dict[str, str]:
    """``{relative path: sha256}`` of a ``sha256sum``-style file (``<hash>  <path>`` lines)."""
    path = Path(path)
    sums: Dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if not sep or len(digest) != 64 or not name:
            raise DataCheckError(f"{path}:{lineno}: expected '<sha256>  <path>', found {line!r}")
        sums[name] = digest.lower()
    return sums


@dataclass(frozen=True)
class AssetStatus:
    """The outcome for one asset: ``ok``, ``copied``, ``missing`` or ``mismatch``."""

    spec: AssetSpec
    status: str
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.status in ("ok", "copied")


def check_asset(spec: AssetSpec, project_dir: Path, data_dir: Optional[Path] = None, *, link: bool = False) -> AssetStatus:
    """Verify one asset; copy (or symlink, `link`) it from `data_dir` when absent or wrong."""
    dest = project_dir / spec.dest
    problem = ""
    if dest.is_file():
        digest = file_digest(dest)
        if digest in spec.sha256:
            return AssetStatus(spec, "ok")
        problem = f"{dest} has sha256 {digest}, expected {' or '.join(spec.sha256)}"
    if data_dir is not None:
        source = data_dir / spec.relative
        if source.is_file():
            digest = file_digest(source)
            if digest not in spec.sha256:
                return AssetStatus(spec, "mismatch", f"{source} has sha256 {digest}, expected {' or '.join(spec.sha256)}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() or dest.is_symlink():
                dest.unlink()
            if link:
                dest.symlink_to(source.resolve())
            else:
                shutil.copyfile(source, dest)
            return AssetStatus(spec, "copied", f"from {source}")
    if problem:
        return AssetStatus(spec, "mismatch", problem)
    return AssetStatus(spec, "missing", f"{dest} does not exist")


def check_assets(
    specs: Sequence[AssetSpec],
    project_dir: PathLike = ".",
    data_dir: Optional[PathLike] = None,
    *,
    link: bool = False,
    progress: bool = False,
) -> List[AssetStatus]:
    """`check_asset` for every spec (a tqdm bar when `progress`); a missing `data_dir` is ignored."""
    project_dir = Path(project_dir)
    source_dir = Path(data_dir) if data_dir is not None and Path(data_dir).is_dir() else None
    items = list(specs)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="checking data", unit="files")
    return [check_asset(spec, project_dir, source_dir, link=link) for spec in items]


def compare_with_sums(specs: Sequence[AssetSpec], sums: Dict[str, str]) -> List[str]:
    """Disagreements between the assets' sha256 and a ``SHA256SUMS`` listing (by relative path).

    Assets the listing does not cover (the tokenizer) are skipped; files of the listing that no
    asset names are reported.
    """
    problems: List[str] = []
    by_relative = {spec.relative.as_posix(): spec for spec in specs}
    for name, digest in sorted(sums.items()):
        spec = by_relative.get(name)
        if spec is None:
            problems.append(f"{name}: listed in SHA256SUMS but not an asset")
        elif digest not in spec.sha256:
            problems.append(f"{name}: SHA256SUMS has {digest}, the asset list {' or '.join(spec.sha256)}")
    return problems
