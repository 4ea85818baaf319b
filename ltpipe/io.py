"""Atomic, byte-reproducible writers: a killed stage never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_leftovers(path: str | os.PathLike) -> None:
    """Remove what a killed writer of `path` left behind: `atomic_path` temp files beside it (and, for a folder,
    inside it) and the `.<name>.tmp.*` / `.<name>.old.*` folders of a whole-folder replacement."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    beside = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*")
              if p.name.endswith(".tmp") or p.name.startswith((f".{path.name}.tmp.", f".{path.name}.old."))]
    inside = [p for p in path.rglob(".*.tmp") if p.is_file()] if path.is_dir() else []
    for p in beside + inside:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV without its index."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    # np.save into a buffer: .npz would embed zip timestamps and break DVC's run-cache.
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())


# safetensors writes a metadata map in hash order, which changes from call to call: one key keeps the bytes fixed.
_METADATA_KEY = "ltpipe"


def save_tensors(path: str | os.PathLike, tensors: Dict[str, "torch.Tensor"], metadata: Dict[str, Any] | None = None) -> None:
    """safetensors rather than torch.save: its bytes depend on the tensors and the (JSON-able) metadata only."""
    from safetensors.torch import save

    header = None if metadata is None else {_METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=header))


def load_tensors(path: str | os.PathLike) -> Dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return load_file(str(path))


def load_tensor_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """The metadata `save_tensors` stored with the tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[_METADATA_KEY])
