"""Where a ``from_pretrained`` name points: a local directory or file, or a repository on the
Hugging Face Hub, downloaded into (and read back from) HF's cache through ``huggingface_hub``.

Owns
- `HUB_OPTIONS`: HF's ``from_pretrained`` keywords about where and how to download;
- `LEGACY_NAMES`: names in HF's documentation of these classes that are no Hub repository,
  mapped to the repository they stand for;
- `hub_repo_id`: whether a name is local or a Hub repository (and which);
- `resolve_file`: one named file of a checkpoint (``config.json``, ``sentencepiece.bpe.model``);
- `resolve_checkpoint`: the folder holding a checkpoint's ``config.json`` and weights (one file,
  or the shards its index names; safetensors first), downloading only those files;
- `HubError`, the error of every Hub look-up (an ``OSError``, as HF raises).

A name is local, as in HF, when it (with ``subfolder``) is an existing directory or file, or when
it cannot be a repository id (``./x``, ``/x``, ``a/b/c``); it is then read from the file system
and a missing path is the reader's error. Any other name is a Hub repository: ``hf_hub_download``
fetches each needed file into the HF cache (``HF_HUB_CACHE`` / ``HF_HOME``, or ``cache_dir``) from
``HF_ENDPOINT``, with its progress bar, and files already cached for that commit are not fetched
again. Options: ``revision`` (branch, tag or commit), ``cache_dir``, ``token`` (or HF's
``use_auth_token``), ``local_files_only``, ``force_download``, ``proxies``, ``user_agent``,
``subfolder``; ``HF_HUB_OFFLINE=1`` (read by ``huggingface_hub`` when it is first imported, which
`modeling` does only for a name that is no existing path) works like ``local_files_only=True``:
cached files only.
The other keywords of `HUB_OPTIONS` are accepted and change nothing. Every file after the first is
fetched at the commit the first one came from, so a checkpoint never mixes two commits.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union, cast

PathLike = Union[str, "os.PathLike[str]"]

#: HF ``from_pretrained`` keywords about where and how to download
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies",
               "resume_download", "use_auth_token", "trust_remote_code", "user_agent", "mirror",
               "_from_auto", "_from_pipeline", "_commit_hash")
# passed on to hf_hub_download as they are; the others are accepted and ignored (deprecated or
# meaningless here: resumption is automatic, there is no remote code, no mirror)
_DOWNLOAD_OPTIONS = ("cache_dir", "force_download", "proxies", "user_agent")

#: names of HF's documentation that no Hub repository has, and the repository meant: HF's
#: XLM-RoBERTa-XL docs (the seed) load ``"xlm-roberta-xlarge"``, which never existed on the Hub
#: (transformers issues 23279 and 28562); the checkpoint they describe is facebook/xlm-roberta-xl.
#: (Repositories the Hub renamed, e.g. its legacy names moved into organisations, answer with a
#: redirect that huggingface_hub follows; for this name the Hub has none.)
LEGACY_NAMES: Dict[str, str] = {"xlm-roberta-xlarge": "facebook/xlm-roberta-xl"}

_SNAPSHOT = re.compile(r"^[0-9a-f]{40}$")


class HubError(OSError):
    """A Hub name cannot be resolved; the message names the repository, revision and file."""


def hub_options(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Take HF's Hub keywords (`HUB_OPTIONS`) out of ``kwargs``."""
    return {name: kwargs.pop(name) for name in list(kwargs) if name in HUB_OPTIONS}


def hub_repo_id(name: PathLike, *, subfolder: str = "") -> Optional[str]:
    """The Hub repository ``name`` stands for (`LEGACY_NAMES` mapped), or None when it is local:
    an existing path (``subfolder`` inside it), or a name that cannot be a repository id."""
    if _local(name, subfolder).exists():
        return None
    text = os.fspath(name)
    if text in LEGACY_NAMES:
        return LEGACY_NAMES[text]
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


def resolve_file(name: PathLike, filename: str, *, subfolder: str = "", **options: Any) -> Path:
    """The file ``filename`` of the checkpoint ``name``: for a local directory the path inside it,
    for any other local path that path (existing or not: the reader says what is missing), for a
    Hub repository the downloaded file (`HubError` when there is none)."""
    _check_options(options)
    repo_id = hub_repo_id(name, subfolder=subfolder)
    if repo_id is None:
        path = _local(name, subfolder)
        return path / filename if path.is_dir() else path
    return cast(Path, _HubRepo(name, repo_id, subfolder, options).fetch(filename))  # required: never None


def resolve_checkpoint(name: PathLike, *, subfolder: str = "", optional_files: Iterable[str] = (),
                       **options: Any) -> Path:
    """The local path of the checkpoint ``name``: a local directory or file as it is (``subfolder``
    inside it); for a Hub repository the cache folder holding its ``config.json`` and weights,
    downloaded first. The weights are the first of `modeling.checkpoint.WEIGHT_FILE_NAMES` that
    the repository has (safetensors before ``.bin``); a shard index brings the shards it names, and
    nothing else is fetched (no other format's weights). ``optional_files`` (e.g.
    ``generation_config.json``) are fetched beside them when the repository has them."""
    _check_options(options)
    repo_id = hub_repo_id(name, subfolder=subfolder)
    if repo_id is None:
        return _local(name, subfolder)
    from .checkpoint.discovery import index_shards
    from .checkpoint.files import WEIGHT_FILE_NAMES
    from .config import CONFIG_NAME

    repo = _HubRepo(name, repo_id, subfolder, options)
    repo.fetch(CONFIG_NAME, required=False)
    fetched = (repo.fetch(file, required=False) for file in WEIGHT_FILE_NAMES)  # lazily: stops at the first
    weights = next((path for path in fetched if path is not None), None)
    if weights is None:
        raise HubError(repo.no_weights(WEIGHT_FILE_NAMES))
    if weights.name.endswith(".json"):
        for shard in index_shards(weights):
            repo.fetch(shard)
    for file in optional_files:
        repo.fetch(file, required=False)
    return weights.parent


def _check_options(options: Dict[str, Any]) -> None:
    unknown = [key for key in options if key not in HUB_OPTIONS]
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    token, legacy = options.get("token"), options.get("use_auth_token")
    if token is not None and legacy is not None and token != legacy:
        raise ValueError("give token or use_auth_token (HF's older name of it), not both")


def _local(name: PathLike, subfolder: str) -> Path:
    path = Path(name).expanduser()
    return path / subfolder if subfolder else path


def _describe(name: PathLike, repo_id: str) -> str:
    text = os.fspath(name)
    alias = f" (the name HF's documentation uses for {repo_id})" if text in LEGACY_NAMES else ""
    return f"{text!r}{alias} is not a local directory or file, and the Hub repository {repo_id!r}"


class _HubRepo:
    """One Hub repository at one revision, file by file through ``hf_hub_download``."""

    def __init__(self, name: PathLike, repo_id: str, subfolder: str, options: Dict[str, Any]) -> None:
        from huggingface_hub import constants

        self.name, self.repo_id, self.subfolder = name, repo_id, subfolder
        self.revision: Optional[str] = options.get("revision")
        self.download = {key: options[key] for key in _DOWNLOAD_OPTIONS if options.get(key) is not None}
        token = options.get("token")
        self.download["token"] = token if token is not None else options.get("use_auth_token")

        # HF_HUB_OFFLINE as huggingface_hub read it: no request at all (its sessions, made once per
        # thread, would otherwise keep the setting they were made with)
        self.download["local_files_only"] = bool(options.get("local_files_only")) or constants.HF_HUB_OFFLINE
        self.commit: Optional[str] = None  # the commit of the first file fetched
        self.not_cached: Optional[Exception] = None  # why a file was neither downloaded nor cached

    def fetch(self, filename: str, *, required: bool = True) -> Optional[Path]:
        """The cached file ``filename`` (downloaded when needed); None when the repository has
        no such file, or it is not cached while downloads are off, and not ``required``."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            path = Path(hf_hub_download(self.repo_id, filename, subfolder=self.subfolder or None,
                                        revision=self.commit or self.revision, **self.download))
        except LocalEntryNotFoundError as error:  # before EntryNotFoundError, its base class
            self.not_cached = self.not_cached or error
            if required:
                raise HubError(self._not_cached_message(repr(self._file(filename)), error)) from error
            return None
        except EntryNotFoundError:
            if required:
                raise HubError(f"{self._where()} has no file {self._file(filename)!r}") from None
            return None
        except RevisionNotFoundError:
            raise HubError(f"the Hub repository {self.repo_id!r} has no revision {self.revision!r} "
                           "(a branch, tag or commit hash)") from None
        except GatedRepoError:  # before RepositoryNotFoundError, its base class
            raise HubError(f"{_describe(self.name, self.repo_id)} is gated: ask for access on its Hub page and "
                           "pass token=... (or `hf auth login`) from the account that has it") from None
        except RepositoryNotFoundError as error:
            raise HubError(self._no_repository(error)) from None
        snapshot = path.parents[len(Path(self.subfolder, filename).parts) - 1]  # .../snapshots/<commit>
        if self.commit is None and _SNAPSHOT.match(snapshot.name):
            self.commit = snapshot.name
        return path

    def no_weights(self, names: Iterable[str]) -> str:
        if self.not_cached is not None:
            return self._not_cached_message("weights", self.not_cached)
        return f"{self._where()} has no weights (looked for {', '.join(names)})"

    def _file(self, filename: str) -> str:
        return f"{self.subfolder}/{filename}" if self.subfolder else filename

    def _where(self) -> str:
        revision = f" at revision {self.revision!r}" if self.revision else ""
        return f"the Hub repository {self.repo_id!r}{revision}"

    def _no_repository(self, error: Exception) -> str:
        from huggingface_hub import constants

        status = getattr(getattr(error, "response", None), "status_code", None)
        return (f"{_describe(self.name, self.repo_id)} was not found on {constants.ENDPOINT} (HTTP {status}): "
                "check the name; a private or gated repository needs token=... (or `hf auth login`) from an "
                "account that may read it")

    def _not_cached_message(self, what: str, error: Exception) -> str:
        from huggingface_hub import constants

        cache = self.download.get("cache_dir") or constants.HF_HUB_CACHE
        revision = self.revision or "main"
        if self.download["local_files_only"]:
            reason = "downloads are off (HF_HUB_OFFLINE=1 or local_files_only=True)"
        else:  # huggingface_hub fell back to the cache: the connection failed, or the Hub answered an error
            reason = f"downloading from {constants.ENDPOINT} failed ({error.__cause__ or error})"
        return (f"{_describe(self.name, self.repo_id)} (revision {revision!r}) has no {what} in the HF cache "
                f"({cache}), and {reason}; download it once online, or pass a local directory")
