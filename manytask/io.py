"""Files written atomically and content hashes: a kill at any moment leaves the previous file whole.

Every module that writes state (checkpoints, target stores, bundles, caches, reports) writes through here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file


def user_cache() -> Path:
    """Where manytask keeps what it can rebuild (silver labels, scores of read-only bundles, rows given in
    memory): $MANYTASK_CACHE, else ~/.cache/manytask."""
    return Path(os.environ.get("MANYTASK_CACHE") or Path.home() / ".cache" / "manytask")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Named tensors as safetensors, written atomically from contiguous CPU copies."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_sha256(*texts: str | None) -> str:
    """A short digest of some texts (None counts as absent): caches keyed by an example's id *and* its text."""
    h = hashlib.sha256()
    for t in texts:
        h.update(b"\x00" if t is None else t.encode() + b"\x01")
    return h.hexdigest()[:16]


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of named tensors (names, dtypes, shapes, values), independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
