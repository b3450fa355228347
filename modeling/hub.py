"""Where a ``from_pretrained`` name points: `resolve_path` and the Hub options every
``from_pretrained`` accepts (`HUB_OPTIONS`).

Models and configs are read from local directories and files; the Hub options of HF's
``from_pretrained`` (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ...) are
accepted so that code written for HF runs unchanged on a local checkpoint, and ``subfolder``
selects a folder inside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

#: HF ``from_pretrained`` keywords about where and how to download; accepted, they do not change
#: what a local path reads
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies",
               "resume_download", "use_auth_token", "trust_remote_code", "user_agent", "mirror",
               "_from_auto", "_from_pipeline", "_commit_hash")


def resolve_path(pretrained_model_name_or_path: Union[str, "os.PathLike[str]"], *, subfolder: str = "",
                 **hub_options: Any) -> Path:
    """The local path that ``pretrained_model_name_or_path`` (and ``subfolder`` inside it) names.

    ``hub_options`` are HF's download options (`HUB_OPTIONS`); any other keyword is a
    ``TypeError`` naming it.
    """
    unknown = [name for name in hub_options if name not in HUB_OPTIONS]
    if unknown:
        raise TypeError(f"resolve_path() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    path = Path(pretrained_model_name_or_path)
    return path / subfolder if subfolder else path
