"""A memory-bounded LRU cache of image embeddings, keyed by a signature of image, model and preprocessing."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def image_signature(image: np.ndarray, model_id: str, preprocess: str) -> str:
    """SHA-1 of the pixels, their shape and dtype, the model's identity and the preprocessing name."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha1()
    digest.update(f"{image.shape}|{image.dtype}|{model_id}|{preprocess}".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of a model's weights: name, parameter shapes and a sample of values of each tensor.

    Cached on the model object; call ``forget_fingerprint(model)`` after changing weights in place.
    """
    cached = getattr(model, "_medsam_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha1()
    spec = getattr(model, "spec", None)
    digest.update(str(getattr(spec, "name", type(model).__name__)).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = torch.cat([flat[:16], flat[-16:], flat[:: max(1, flat.numel() // 64)][:64]])
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(sample.float().cpu().numpy().tobytes())
    fingerprint = digest.hexdigest()[:16]
    model._medsam_fingerprint = fingerprint  # type: ignore[attr-defined]
    return fingerprint


def forget_fingerprint(model: torch.nn.Module) -> None:
    if hasattr(model, "_medsam_fingerprint"):
        del model._medsam_fingerprint


def tensor_bytes(value: object) -> int:
    total = 0
    for attr in vars(value).values() if hasattr(value, "__dict__") else []:
        if isinstance(attr, torch.Tensor):
            total += attr.numel() * attr.element_size()
    if isinstance(value, torch.Tensor):
        total += value.numel() * value.element_size()
    return total


class LRUCache(Generic[T]):
    """Thread-safe LRU cache bounded by the bytes of the tensors its values hold."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: str, value: T) -> None:
        size = tensor_bytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class DiskEmbeddingCache:
    """Embeddings on disk, one ``<signature>.npy`` each, bounded in bytes (least recently used files go first).

    For work that spans processes on one volume: the CVPR 2025 protocol runs the tool once per interaction step,
    so the slices encoded at the box step are read back (about 4 MiB each for LiteMedSAM, in milliseconds)
    instead of encoded again (about half a second each on a laptop CPU). Files are written atomically; a file
    that cannot be read is treated as absent and removed. Safe for several processes on one folder.
    """

    def __init__(self, folder: "str | os.PathLike[str]", max_bytes: int = 8 * 2**30) -> None:
        from pathlib import Path

        self.folder = Path(folder).expanduser()
        self.max_bytes = int(max_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.hits = 0
        self.writes = 0

    def _path(self, signature: str):
        if not signature.isalnum():
            raise ValueError(f"embedding signature {signature!r} is not a plain hex digest")
        return self.folder / f"{signature}.npy"

    def __contains__(self, signature: str) -> bool:
        return self._path(signature).is_file()

    def get(self, signature: str) -> np.ndarray | None:
        path = self._path(signature)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recently used: pruned last
        except OSError:
            pass
        self.hits += 1
        return array

    def put(self, signature: str, array: np.ndarray) -> None:
        path = self._path(signature)
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return
        self.writes += 1
        self._prune()

    def _prune(self) -> None:
        with self._lock:
            entries = []
            for p in self.folder.glob("*.npy"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                entries.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in entries)
            for _, size, p in sorted(entries):
                if total <= self.max_bytes:
                    break
                p.unlink(missing_ok=True)
                total -= size
