"""Image embeddings cached on disk for the ``decoder`` strategy, stamped with a signature and refused when stale.

One file per image variant: ``<root>/<model>-<preprocess>/<key>.npz`` where ``key`` is the SHA-1 of the
pixels that go into the preprocessing (after any flip or intensity change). Each file
holds the embedding and a JSON stamp: the key, the image encoder's fingerprint (SHA-1 of every encoder
weight, the model's pixel mean/std), the full preprocessing config, the toolkit version and a format number.
A file whose stamp differs from what the current model would produce (other weights under the same model
name, other preprocessing, another version of the toolkit, or a damaged file) is *stale*: it is refused,
counted, and replaced by a fresh encoding. Writes are atomic, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medsam import __version__
from medsam.io.atomic import atomic_path

FORMAT = 1


def encoder_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 over every image-encoder tensor, the normalisation constants and the preprocessing config."""
    digest = hashlib.sha1()
    spec = getattr(model, "spec", None)
    digest.update(repr(getattr(spec, "preprocess", None)).encode())
    with torch.no_grad():
        for name, tensor in model.image_encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        for buf in (model.pixel_mean, model.pixel_std):
            digest.update(buf.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def pixels_key(display: np.ndarray) -> str:
    """SHA-1 of the pixels that enter the preprocessing (after any augmentation), their shape and dtype."""
    array = np.ascontiguousarray(display)
    digest = hashlib.sha1(f"{array.shape}|{array.dtype}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Stamp:
    key: str
    encoder: str
    preprocess: str
    toolkit: str = __version__
    format: int = FORMAT


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0


class EmbeddingStore:
    """Disk cache of (C, h, w) float32 embeddings for one model (see the module doc)."""

    def __init__(self, root: str | Path, model: torch.nn.Module) -> None:
        spec = model.spec
        self.folder = Path(root).expanduser() / f"{spec.name}-{spec.preprocess.name}"
        self.encoder = encoder_fingerprint(model)
        self.preprocess = repr(spec.preprocess)
        self.stats = StoreStats()

    def stamp(self, key: str) -> Stamp:
        return Stamp(key, self.encoder, self.preprocess)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str) -> np.ndarray | None:
        """The cached embedding, or None when absent or stale (a stale file is counted in ``stats.stale``)."""
        path = self.path(key)
        if not path.is_file():
            self.stats.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stamp = json.loads(str(data["stamp"]))
                embedding = data["embedding"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            self.stats.stale += 1
            return None
        if stamp != asdict(self.stamp(key)) or embedding.ndim != 3:
            self.stats.stale += 1
            return None
        self.stats.hits += 1
        return embedding

    def put(self, key: str, embedding: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = json.dumps(asdict(self.stamp(key)), sort_keys=True)
        with atomic_path(self.path(key), overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, embedding=np.asarray(embedding, dtype=np.float32), stamp=np.array(stamp))


# --- the table of a training set's embeddings ----------------------------------------------------------


@dataclass
class VariantIndex:
    """Every distinct image variant of a list of samples: key -> row, where each key's pixels come from,
    and per sample its (variant, row) pairs. Objects that share an image share its rows."""

    rows_of_key: dict[str, int]
    source: dict[str, tuple[object, object]]  # key -> (Sample, Variant)
    rows: list[list[tuple[object, int]]]


def index_variants(samples, variants) -> VariantIndex:
    """Key every (sample, variant) by the pixels the variant gives (hashing each image once per variant)."""
    from medsam.training.dataset import display_image

    keys: dict[str, int] = {}
    source: dict[str, tuple[object, object]] = {}
    rows: list[list[tuple[object, int]]] = []
    for sample, sample_variants in zip(samples, variants, strict=True):
        display = display_image(sample)
        mine = []
        for v in sample_variants:
            key = pixels_key(v.apply_image(display))
            if key not in keys:
                keys[key] = len(keys)
                source[key] = (sample, v)
            mine.append((v, keys[key]))
        rows.append(mine)
    return VariantIndex(keys, source, rows)


def load_or_encode(store: EmbeddingStore, model: torch.nn.Module, index: VariantIndex, *, batch_size: int = 4,
                   encode: bool = True, progress: str | None = None) -> list[np.ndarray]:
    """The embedding of every key of ``index``, in row order: cached ones read, the others encoded through
    the predictor's own path (``Predictor.encode_prepared``) and stored. ``encode=False`` only reads (a
    missing one is an InputError): DDP ranks other than 0 read what rank 0 wrote."""
    import sys

    from tqdm import tqdm

    from medsam.errors import InputError
    from medsam.inference.predictor import PreparedImage, Predictor
    from medsam.preprocess.geometry import CoordinateTransform, prepare_image
    from medsam.training.dataset import display_image

    table: list[np.ndarray | None] = [store.get(key) for key in index.rows_of_key]
    todo = [key for key, row in index.rows_of_key.items() if table[row] is None]
    if todo and not encode:
        raise InputError(f"{len(todo)} embeddings are missing from {store.folder}; the cache folder must be "
                         "shared by all processes")
    cfg = model.spec.preprocess
    predictor = Predictor(model, cache_bytes=0)
    bar = tqdm(total=len(todo), desc=progress, disable=progress is None or not todo, file=sys.stderr, leave=False)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prepared = []
        for key in chunk:
            sample, variant = index.source[key]
            image = variant.apply_image(display_image(sample))
            transform = CoordinateTransform.for_image(image.shape[:2], cfg)
            prepared.append(PreparedImage(prepare_image(image, cfg, source=sample.key), transform, key))
        for key, enc in zip(chunk, predictor.encode_prepared(prepared, len(prepared)), strict=True):
            array = enc.embedding[0].float().cpu().numpy()
            store.put(key, array)
            table[index.rows_of_key[key]] = array
        bar.update(len(chunk))
    bar.close()
    return table  # type: ignore[return-value]
