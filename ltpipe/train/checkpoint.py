"""Resumable checkpoints, keyed by the run's fingerprint (params + input data) and kept outside the workspace.

DVC deletes a stage's outputs before running it, and `dvc exp run --temp` / `--queue` run in a temporary copy of the
repository that DVC removes when the task fails: a checkpoint in either place would be lost exactly when it is
needed. So checkpoints live in one cache folder (`$LTPIPE_RESUME_DIR`, default `$XDG_CACHE_HOME/ltpipe/resume` or
`~/.cache/ltpipe/resume`), named by the fingerprint: the same run, started again from any copy of the repository,
finds its checkpoint; another run never does. A run deletes its checkpoint when it finishes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from ltpipe.io import atomic_path, remove_leftovers

RESUME_ENV = "LTPIPE_RESUME_DIR"


def fingerprint(config: Dict[str, Any], files: Iterable[Path]) -> str:
    """Hash of the run's params and input files (by name and content, not by path)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in sorted(map(Path, files), key=lambda p: p.name):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def resume_dir() -> Path:
    if os.environ.get(RESUME_ENV):
        return Path(os.environ[RESUME_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ltpipe" / "resume"


def checkpoint_path(run_id: str, directory: str | os.PathLike | None = None) -> Path:
    """Where the run `run_id` (a fingerprint) keeps its checkpoint; leftovers of a killed save are removed."""
    path = Path(directory if directory is not None else resume_dir()) / f"stage1-{run_id[:32]}.pt"
    remove_leftovers(path)
    return path


def save_checkpoint(path, state: Dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, expected_fingerprint: str) -> Optional[Dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a checkpoint from an incompatible version: start over rather than fail
        return None
    return state if state.get("fingerprint") == expected_fingerprint else None
