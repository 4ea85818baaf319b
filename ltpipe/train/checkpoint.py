"""Resumable checkpoints: saved atomically each epoch, used only when their fingerprint matches the run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from ltpipe.io import atomic_path


def fingerprint(config: Dict[str, Any], files: Iterable[Path]) -> str:
    """Hash of the run's params and input files: a checkpoint of another run is never resumed."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in sorted(map(Path, files)):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


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
