"""Fine-tuning: ``finetune(FinetuneConfig(...)) -> FinetuneResult``, the engine of ``medsam finetune``.

    from medsam.training import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(data="../shared/data/cases.csv", output_dir="runs/fetal",
                                     datasets=("ultrasound_fetal_head",), train_first=40,
                                     strategy="decoder", epochs=12))
    result.best_checkpoint        # runs/fetal/best.pt, loads with build_model("lite_medsam", checkpoint=...)

Strategies (the prompt encoder is frozen in all of them, as MedSAM trains):

- ``decoder``: the image encoder is frozen too, so each training image (and each augmented variant of it,
  see :mod:`medsam.training.augment`) is encoded once, cached on disk (:mod:`medsam.training.embedding_store`)
  and reused every epoch; only the mask decoder trains. Quick on a CPU.
- ``full``: image encoder and mask decoder train; the encoder runs on every step.
- ``lora``: low-rank adapters on the encoder's attention ``qkv``/``proj`` and MLP ``fc1``/``fc2`` (configurable)
  plus the mask decoder; ``best.pt`` holds merged plain weights.

BatchNorm layers (TinyViT's convolutions) keep their pretrained statistics in every strategy (eval mode):
batches of a few images would corrupt them. Dropout, where present (LoRA dropout), is active.

The loop: AdamW, linear warm-up then cosine decay (per optimizer step), gradient accumulation and clipping,
autocast + GradScaler on CUDA (bf16 where supported, else fp16; ``amp="bf16"`` also works on a CPU), a fixed
seed, a tqdm bar, ``metrics.csv`` and ``curves.png`` every epoch, ``last.pt`` every epoch and ``best.pt`` by
validation DSC (epoch 0, the model before training, is a candidate: if fine-tuning never beats it, best.pt
is the base model and the card says so), early stopping after ``patience`` validations without
improvement, ``resume=True`` to continue from ``last.pt`` (an epoch interrupted mid-way is run again from
its start, with the same data and prompts, so the result equals an uninterrupted run).

Under ``torchrun --nproc_per_node N`` the same call trains with DistributedDataParallel: each process gets
``batch_size`` samples per step through a DistributedSampler (so the effective batch is N x batch_size);
rank 0 encodes the cache, validates, logs and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from medsam import __version__
from medsam.errors import InputError, OutputError
from medsam.training import checkpoint as ckpt
from medsam.evaluation.cases import Case
from medsam.training.data import DataReport, Sample, load_samples, read_cases, select_cases, split_cases
from medsam.training.distributed import DistContext, all_sum, barrier, broadcast, setup, teardown
from medsam.training.lora import DEFAULT_TARGETS, apply_lora, has_lora, lora_parameters, merged_state_dict
from medsam.training.validate import ValidationResult, validate

Strategy = Literal["decoder", "full", "lora"]
STRATEGIES = ("decoder", "full", "lora")
DEFAULT_LR = {"decoder": 1e-4, "full": 1e-5, "lora": 2e-4}
# Fields that may differ when a run is resumed (everything else must match the saved config).
RESUMABLE_CHANGES = {"epochs", "patience", "min_delta", "progress", "device", "threads", "resume", "num_workers",
                     "embedding_cache", "val_every"}


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a run needs; saved as ``config.json`` in the run folder.

    Data: ``data`` is a cases.csv manifest (or its folder), a folder with images/ + masks/, or a folder of
    npz cases. ``datasets`` keeps only those manifest datasets. Validation, in order of precedence:
    ``val_data`` (another source; ``val_cases`` may pick from it), explicit ``train_cases``/``val_cases``
    ids, ``train_first`` (the first N selected cases train, the next ``val_first`` or all the rest
    validate), else a seeded random split of ``val_split`` by image (0 = no validation).
    """

    data: str
    output_dir: str
    model: str = "lite_medsam"
    checkpoint: str | None = None
    strategy: Strategy = "decoder"
    epochs: int = 10
    batch_size: int = 8
    accumulate: int = 1
    lr: float | None = None  # None: DEFAULT_LR of the strategy
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # data selection
    datasets: tuple[str, ...] = ()
    val_data: str | None = None
    val_split: float = 0.2
    train_cases: tuple[str, ...] | None = None
    val_cases: tuple[str, ...] | None = None
    train_first: int | None = None
    val_first: int | None = None
    max_slices_per_volume: int = 16
    # prompts, augmentation, loss
    jitter_px: int = 20
    point_prob: float = 0.0
    flips: Literal["none", "h", "v", "hv"] = "h"
    intensity_variants: int = 0  # decoder: intensity-changed variants cached per image
    intensity_prob: float = 0.5  # full / lora: chance of an intensity change per step
    iou_weight: float = 1.0
    # LoRA
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    lora_dropout: float = 0.0
    # loop control
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0
    val_every: int = 1
    nsd_tolerance: float = 2.0
    seed: int = 0
    device: str | None = None
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is often fastest on a busy machine
    embedding_cache: str | None = None  # default: <output_dir>/embeddings
    encode_batch: int = 4
    num_workers: int = 0
    resume: bool = False
    progress: bool = True

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.strategy]

    def check(self) -> None:
        """Raise InputError naming the first bad setting."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        need(self.strategy in STRATEGIES, f"strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        need(self.epochs >= 1, f"epochs {self.epochs} must be at least 1")
        need(self.batch_size >= 1, f"batch size {self.batch_size} must be at least 1")
        need(self.accumulate >= 1, f"accumulate {self.accumulate} must be at least 1")
        need(self.learning_rate > 0, f"learning rate {self.lr} must be positive")
        need(0 <= self.warmup_fraction < 1, f"warmup fraction {self.warmup_fraction} must lie in [0, 1)")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio {self.min_lr_ratio} must lie in [0, 1]")
        need(self.amp in ("auto", "off", "bf16", "fp16"), f"amp {self.amp!r}: use auto, off, bf16 or fp16")
        need(0 <= self.val_split < 1, f"val split {self.val_split} must lie in [0, 1)")
        need(self.train_first is None or self.train_first >= 1, f"train_first {self.train_first} must be >= 1")
        need(self.val_first is None or self.train_first is not None, "val_first needs train_first")
        need(self.jitter_px >= 0, f"jitter {self.jitter_px} px must be >= 0")
        need(0 <= self.point_prob <= 1, f"point probability {self.point_prob} must lie in [0, 1]")
        need(self.flips in ("none", "h", "v", "hv"), f"flips {self.flips!r}: use none, h, v or hv")
        need(self.intensity_variants >= 0, "intensity_variants must be >= 0")
        need(self.lora_rank >= 1, f"LoRA rank {self.lora_rank} must be at least 1")
        need(self.patience >= 0 and self.val_every >= 1, "patience must be >= 0 and val_every >= 1")
        need(self.max_slices_per_volume >= 1, "max_slices_per_volume must be >= 1")
        need(self.threads is None or self.threads >= 1, f"threads {self.threads} must be at least 1")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FinetuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"config has unknown settings {', '.join(unknown)} (written by another version?)")
        tuples = {"datasets", "train_cases", "val_cases", "lora_targets"}
        return cls(**{k: (tuple(v) if k in tuples and v is not None else v) for k, v in data.items()})

    @classmethod
    def load(cls, run_dir: str | Path) -> "FinetuneConfig":
        path = Path(run_dir).expanduser() / "config.json"
        if not path.is_file():
            raise InputError(f"{path} does not exist: {run_dir} is not a fine-tuning run folder")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"{path} is not a valid run config: {exc}") from exc


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced. ``best`` / ``zero_shot``: validation means (dsc, nsd, nsd_challenge, n)."""

    run_dir: Path
    best_checkpoint: Path
    card_path: Path
    best_epoch: int
    best: dict[str, float]
    zero_shot: dict[str, float]
    epochs_run: int
    steps: int
    stopped_early: bool
    seconds: float
    train_samples: int
    val_samples: int
    skipped: int
    history: tuple[dict[str, float], ...] = field(default=(), repr=False)


def finetune(config: FinetuneConfig, *, on_step: Callable[[int, int], None] | None = None) -> FinetuneResult:
    """Run (or, with ``config.resume``, continue) a fine-tuning run; see the module doc.

    on_step(step, epoch) is called after every optimizer step on every process (progress hooks; an
    exception raised there stops the run like an interruption: the files of the last finished epoch stay).
    """
    config.check()
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    ctx = setup(config.device)
    try:
        return _Run(config, ctx, on_step).run()
    finally:
        teardown(ctx)


# --- the run --------------------------------------------------------------------------------------------


class _TrainForward(nn.Module):
    """Prompts (+ embeddings or images) -> single-mask logits (B, L, L) and IoU predictions (B,).

    Calls the decoder's ``predict_masks`` and keeps output 0 (the single-mask output, as LiteMedSAM trains
    and the predictor uses), so every decoder parameter is in the graph (DDP needs no unused-parameter scan).
    Samples with a point and samples with a box only are decoded in two groups: padding a box-only sample
    with a "not a point" token would give it a prompt that inference never gives.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor | None,
                point_labels: torch.Tensor | None, encode: bool) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.encode(x) if encode else x
        if points is None:
            return self._decode(emb, boxes, None)
        has = (point_labels >= 0).any(dim=1)
        groups = [g for g in (torch.nonzero(~has).squeeze(1), torch.nonzero(has).squeeze(1)) if g.numel()]
        outs = [self._decode(emb[g], boxes[g], (points[g], point_labels[g]) if has[g[0]] else None) for g in groups]
        inverse = torch.argsort(torch.cat(groups))
        return torch.cat([o[0] for o in outs])[inverse], torch.cat([o[1] for o in outs])[inverse]

    def _decode(self, emb, boxes, points):
        m = self.model
        sparse, dense = m.prompt_encoder(points=points, boxes=boxes, masks=None)
        masks, iou = m.mask_decoder.predict_masks(emb, m.prompt_encoder.get_dense_pe(), sparse, dense)
        return masks[:, 0], iou[:, 0]


def _set_train_mode(model: nn.Module) -> None:
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then cosine to min_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Run:
    def __init__(self, config: FinetuneConfig, ctx: DistContext, on_step) -> None:
        self.config = config
        self.ctx = ctx
        self.on_step = on_step
        self.run_dir = Path(config.output_dir).expanduser()
        self.t0 = time.perf_counter()

    # -- logging --
    def log(self, message: str) -> None:
        if self.ctx.is_main and self.config.progress:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def run(self) -> FinetuneResult:
        c, ctx = self.config, self.ctx
        state = self._check_folder()
        amp = _resolve_amp(c.amp, ctx.device)
        train_cases, val_cases = self._split()
        self.train, report = load_samples(train_cases, max_slices_per_volume=c.max_slices_per_volume)
        self.val: list[Sample] = []
        val_report = DataReport()
        if val_cases:
            self.val, val_report = load_samples(val_cases, max_slices_per_volume=c.max_slices_per_volume,
                                                report=val_report, what="validation")
        self.reports = (report, val_report)
        self._warn_skipped(report, "training")
        self._warn_skipped(val_report, "validation")
        self.train_case_ids = [k.key for k in train_cases]
        self.val_case_ids = [k.key for k in val_cases]
        self.log(f"data: training {report.describe()}; validation {val_report.describe() if val_cases else 'none'}")
        self._create_folder()

        from medsam.models.registry import build_model

        model = build_model(c.model, checkpoint=c.checkpoint, device=ctx.device)
        self.model = model
        self.spec = model.spec
        trainable = self._configure_strategy(model)
        self.trainable = trainable
        self.n_trainable = sum(p.numel() for p in trainable)
        self.log(f"model {c.model}, strategy {c.strategy}: {self.n_trainable:,} of "
                 f"{sum(p.numel() for p in model.parameters()):,} parameters train")

        items, self.val_encoding = self._items()
        sampler = torch.utils.data.DistributedSampler(
            items, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=c.seed, drop_last=False
        )
        loader = torch.utils.data.DataLoader(items, batch_size=c.batch_size, sampler=sampler,
                                             collate_fn=_collate, num_workers=c.num_workers)
        batches = len(loader)
        self.steps_per_epoch = math.ceil(batches / c.accumulate)
        total = c.epochs * self.steps_per_epoch
        warmup = int(round(c.warmup_fraction * total))
        optimizer = torch.optim.AdamW(trainable, lr=c.learning_rate, weight_decay=c.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup, c.min_lr_ratio)
        )
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == "fp16")
        forward = _TrainForward(model)
        if ctx.distributed:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )

        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_dsc, self.since_best = 0, -math.inf, 0
        self.zero_shot: ValidationResult | None = None
        self.best_scores: ValidationResult | None = None
        epoch, step = 0, 0
        if state is not None:
            epoch, step = self._restore(state, optimizer, scheduler, scaler)
            self.log(f"resumed {self.run_dir} after epoch {epoch} (step {step})")
        else:
            self._validate_and_save(0, 0, None, optimizer, scheduler, scaler)

        stopped_early = False
        stop = c.patience > 0 and self.since_best >= c.patience  # a resumed run that had stopped early
        while epoch < c.epochs and not stop:
            epoch += 1
            items.set_epoch(epoch)
            sampler.set_epoch(epoch)
            _set_train_mode(model)
            step, train_row = self._train_epoch(epoch, step, loader, forward, optimizer, scheduler, scaler, amp)
            stop = self._validate_and_save(epoch, step, train_row, optimizer, scheduler, scaler)
            stopped_early = stop and epoch < c.epochs
        return self._finish(epoch, step, stopped_early)

    # -- set-up --
    def _check_folder(self) -> dict | None:
        """Resume: the saved state (settings must match). New run: the folder must be new or empty.
        Nothing is written here, so bad data found next leaves no half-made run folder."""
        c = self.config
        if c.resume:
            saved = FinetuneConfig.load(self.run_dir)
            diff = [f.name for f in dataclasses.fields(c)
                    if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(c, f.name)]
            if diff:
                raise InputError(
                    f"--resume {self.run_dir}: the settings {', '.join(diff)} differ from the saved run's "
                    "config.json; a resumed run keeps its settings (only epochs, patience and devices may change)"
                )
            return ckpt.load_state(self.run_dir / ckpt.LAST)
        if self.run_dir.exists() and (not self.run_dir.is_dir() or any(self.run_dir.iterdir())):
            if (self.run_dir / ckpt.LAST).exists():
                raise OutputError(f"{self.run_dir} already holds a run: pass --resume {self.run_dir} to "
                                  "continue it, or choose another output folder")
            raise OutputError(f"output folder {self.run_dir} exists and is not empty; choose a new folder")
        return None

    def _create_folder(self) -> None:
        if self.ctx.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"run folder {self.run_dir} cannot be created: {exc}") from exc
            ckpt.write_json_atomic(self.config.to_json(), self.run_dir / "config.json")
        barrier(self.ctx)

    def _split(self) -> tuple[list[Case], list[Case]]:
        c = self.config
        cases = read_cases(c.data, datasets=c.datasets)
        if c.val_data:
            val_all = read_cases(c.val_data)
            val_ds = [d for d in c.datasets if d in {v.dataset for v in val_all}]
            val = read_cases(c.val_data, datasets=val_ds)
            val = select_cases(val, c.val_cases) if c.val_cases is not None else val
            train = select_cases(cases, c.train_cases) if c.train_cases is not None else cases
        elif c.train_cases is not None or c.val_cases is not None:
            train = select_cases(cases, c.train_cases) if c.train_cases is not None else None
            val = select_cases(cases, c.val_cases) if c.val_cases is not None else None
            if train is None:
                train = [k for k in cases if k.key not in {v.key for v in val}]
            if val is None:
                val = [k for k in cases if k.key not in {t.key for t in train}]
        elif c.train_first is not None:
            if c.train_first >= len(cases):
                raise InputError(f"train_first {c.train_first}: only {len(cases)} cases are selected, "
                                 "so none would be left to validate")
            train = cases[: c.train_first]
            rest = cases[c.train_first :]
            val = rest[: c.val_first] if c.val_first is not None else rest
        elif c.val_split > 0:
            train, val = split_cases(cases, val_fraction=c.val_split, seed=c.seed)
        else:
            train, val = cases, []
        both = {k.key for k in train} & {k.key for k in val} if not c.val_data else set()
        if both:
            raise InputError(f"case(s) {', '.join(sorted(both)[:3])} are in both training and validation")
        if not train:
            raise InputError("no training case is selected")
        return train, val

    def _warn_skipped(self, report: DataReport, what: str) -> None:
        if report.skipped and self.ctx.is_main:
            first = "; ".join(m for _, _, m in report.skipped[:2])
            warnings.warn(f"{what} data: skipped {len(report.skipped)} case(s) or slice(s) "
                          f"{report.status_counts()}, e.g. {first}", stacklevel=3)

    def _configure_strategy(self, model: nn.Module) -> list[nn.Parameter]:
        c = self.config
        for p in model.parameters():
            p.requires_grad_(False)
        if c.strategy == "lora":
            names = apply_lora(model, rank=c.lora_rank, alpha=c.lora_alpha, targets=c.lora_targets,
                               dropout=c.lora_dropout)
            model.to(self.ctx.device)
            self.lora_layers = names
            groups = [model.mask_decoder.parameters(), lora_parameters(model)]
        elif c.strategy == "full":
            groups = [model.image_encoder.parameters(), model.mask_decoder.parameters()]
        else:
            groups = [model.mask_decoder.parameters()]
        params = [p for g in groups for p in g]
        for p in params:
            p.requires_grad_(True)
        _set_train_mode(model)
        return params

    def _items(self):
        from medsam.training.dataset import EmbeddingItems, ImageItems, PromptSettings

        c = self.config
        low_res = tuple(self.model.low_res_size)
        prompts = PromptSettings(c.jitter_px, c.point_prob)
        if c.strategy != "decoder":
            items = ImageItems(self.train, self.spec.preprocess, low_res, prompts, c.seed, c.flips, c.intensity_prob)
            return items, None
        from medsam.training.augment import Variant, cached_variants

        cache_root = Path(c.embedding_cache).expanduser() if c.embedding_cache else self.run_dir / "embeddings"
        variants = [cached_variants(c.flips, c.intensity_variants, c.seed, i) for i in range(len(self.train))]
        table, rows = self._embedding_table(cache_root, self.train, variants, "training")
        self.train_table = table
        items = EmbeddingItems(self.train, self.spec.preprocess, low_res, prompts, c.seed, rows)
        val_encoding = None
        if self.val and self.ctx.is_main:
            val_table, val_rows = self._embedding_table(cache_root, self.val, [[Variant()]] * len(self.val),
                                                        "validation", all_ranks=False)
            val_encoding = _CachedEncodings(self.val, val_table, [r[0][1] for r in val_rows],
                                            self.spec.preprocess, self.ctx.device)
        return items, val_encoding

    def _embedding_table(self, root: Path, samples: Sequence[Sample], variants, what: str, all_ranks: bool = True):
        """The (N, C, h, w) table of every distinct image variant and, per sample, its (variant, row) pairs.
        Rank 0 reads the cache and encodes what is missing; with ``all_ranks`` the others wait, then read."""
        from medsam.training.embedding_store import EmbeddingStore, index_variants, load_or_encode

        store = EmbeddingStore(root, self.model)
        index = index_variants(samples, variants)
        table = None
        if self.ctx.is_main:
            table = load_or_encode(store, self.model, index, batch_size=self.config.encode_batch,
                                   progress=f"encoding {what} images" if self.config.progress else None)
            if store.stats.stale:
                warnings.warn(f"{store.stats.stale} cached {what} embedding(s) in {store.folder} were stale "
                              "(other encoder weights, preprocessing or toolkit version) and were recomputed",
                              stacklevel=3)
            self.log(f"{what} embeddings: {len(table)} image variants, {store.stats.hits} from the cache, "
                     f"{len(table) - store.stats.hits} encoded ({store.folder})")
        if all_ranks:
            barrier(self.ctx)
        if table is None:
            table = load_or_encode(store, self.model, index, encode=False)
        return torch.from_numpy(np.stack(table)), index.rows

    # -- training --
    def _train_epoch(self, epoch, step, loader, forward, optimizer, scheduler, scaler, amp):
        from tqdm import tqdm

        from medsam.training.losses import segmentation_loss

        c, ctx = self.config, self.ctx
        t0 = time.perf_counter()
        encode = c.strategy != "decoder"
        n_batches = len(loader)
        sums = np.zeros(6)  # loss, dice, bce, iou_mse, true_iou weighted by batch size; samples
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{c.epochs}", disable=not (ctx.is_main and c.progress),
                   file=sys.stderr, leave=False)
        optimizer.zero_grad(set_to_none=True)
        for j, batch in enumerate(loader):
            group = j // c.accumulate
            group_len = min(c.accumulate, n_batches - group * c.accumulate)
            last_in_group = (j + 1) % c.accumulate == 0 or j + 1 == n_batches
            dev = ctx.device
            if encode:
                x = torch.cat([self.model.preprocess(im[None].to(dev)) for im in batch.images])
            else:
                x = self.train_table[batch.embedding_index].to(dev)
            points = batch.points.to(dev) if batch.points is not None else None
            labels = batch.point_labels.to(dev) if batch.point_labels is not None else None
            sync = contextlib.nullcontext()
            if ctx.distributed and not last_in_group:
                sync = forward.no_sync()
            with sync:
                with _autocast(dev, amp):
                    logits, iou = forward(x, batch.boxes.to(dev), points, labels, encode)
                terms = segmentation_loss(logits, iou, batch.target.to(dev), batch.weight.to(dev),
                                          iou_weight=c.iou_weight)
                scaler.scale(terms.total / group_len).backward()
            n = len(batch)
            sums += np.array([float(terms.total.detach()) * n, terms.dice * n, terms.bce * n,
                              terms.iou_mse * n, terms.true_iou * n, n])
            if last_in_group:
                if c.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(self.trainable, c.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                if self.on_step is not None:
                    self.on_step(step, epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{float(terms.total.detach()):.4f}")
        bar.close()
        total = all_sum(ctx, sums.tolist())
        n = max(total[5], 1.0)
        row = {
            "epoch": epoch, "step": step, "lr": float(optimizer.param_groups[0]["lr"]),
            "train_loss": total[0] / n, "train_dice": total[1] / n, "train_bce": total[2] / n,
            "train_iou_mse": total[3] / n, "train_true_iou": total[4] / n,
            "seconds": time.perf_counter() - t0,
        }
        return step, row

    def _validate_and_save(self, epoch, step, train_row, optimizer, scheduler, scaler) -> bool:
        """Validate (rank 0), update best / patience, write files; returns whether to stop."""
        c, ctx = self.config, self.ctx
        row = dict(train_row) if train_row else {"epoch": 0, "step": 0, "lr": float("nan"), "seconds": 0.0}
        due = epoch == 0 or epoch % c.val_every == 0 or epoch == c.epochs
        stop = False
        if ctx.is_main:
            result = None
            if self.val and due:
                t = time.perf_counter()
                result = validate(self.model, self.val, encoding_of=self.val_encoding, tolerance=c.nsd_tolerance)
                _set_train_mode(self.model)
                row.update(val_dsc=result.dsc, val_nsd=result.nsd, val_nsd_challenge=result.nsd_challenge)
                row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - t
            if epoch == 0:
                self.zero_shot = result
            improved = False
            if result is not None:
                improved = result.dsc > self.best_dsc + (c.min_delta if epoch > 0 else 0.0)
            elif not self.val:
                improved = True  # no validation: the latest weights are the result
            if improved:
                self.best_epoch, self.best_dsc, self.since_best = epoch, (result.dsc if result else -math.inf), 0
                self.best_scores = result
            elif result is not None:
                self.since_best += 1
            stop = c.patience > 0 and self.since_best >= c.patience
            self.history.append(row)
            if improved:
                ckpt.save_atomic({"model": self._result_state(), "medsam": self._card(epoch, step, False)},
                                 self.run_dir / ckpt.BEST)
            ckpt.save_atomic(self._state(epoch, step, optimizer, scheduler, scaler, stop), self.run_dir / ckpt.LAST)
            self._write_reports()
            msg = f"epoch {epoch}: "
            if train_row:
                msg += f"loss {row['train_loss']:.4f}, "
            if result is not None:
                msg += f"val DSC {result.dsc:.4f} NSD {result.nsd:.4f} NSD(challenge) {result.nsd_challenge:.4f}"
                msg += " (best)" if improved else f" (best {self.best_dsc:.4f} at epoch {self.best_epoch})"
            self.log(msg.rstrip(", "))
        stop = broadcast(ctx, stop)
        barrier(ctx)
        return stop

    def _result_state(self) -> dict[str, torch.Tensor]:
        if has_lora(self.model):
            return merged_state_dict(self.model)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _state(self, epoch, step, optimizer, scheduler, scaler, stopped) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "medsam": self._card(epoch, step, stopped),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": int(epoch),
            "step": int(step),
            "stopped": bool(stopped),
            "best": {"epoch": int(self.best_epoch), "dsc": float(self.best_dsc), "since": int(self.since_best)},
            "history": [dict(r) for r in self.history],
            "zero_shot": _result_record(self.zero_shot),
            "best_scores": _result_record(self.best_scores),
            "rng": ckpt.rng_state(),
        }

    def _restore(self, state, optimizer, scheduler, scaler) -> tuple[int, int]:
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        best = state["best"]
        self.best_epoch, self.best_dsc, self.since_best = int(best["epoch"]), float(best["dsc"]), int(best["since"])
        self.history = [dict(r) for r in state["history"]]
        self.zero_shot = _result_from_record(state.get("zero_shot"))
        self.best_scores = _result_from_record(state.get("best_scores"))
        ckpt.restore_rng(state["rng"])
        _set_train_mode(self.model)
        return int(state["epoch"]), int(state["step"])

    def _card(self, epoch: int, step: int, stopped: bool) -> dict[str, Any]:
        c = self.config
        report, val_report = self.reports
        card: dict[str, Any] = {
            "name": f"{c.model}-{c.strategy}-finetuned",
            "base_model": c.model,
            "base_checkpoint": c.checkpoint or "the variant's default weights",
            "strategy": c.strategy,
            "trainable_parameters": int(self.n_trainable),
            "preprocess": self.spec.preprocess.name,
            "data": {
                "source": str(c.data),
                "datasets": list(c.datasets),
                "validation_source": str(c.val_data or c.data),
                "train_cases": len(self.train_case_ids),
                "val_cases": len(self.val_case_ids),
                "train_samples": len(self.train),
                "val_samples": len(self.val),
                "skipped": len(report.skipped) + len(val_report.skipped),
            },
            "training": {
                "epochs_planned": int(c.epochs), "epochs_run": int(epoch), "steps": int(step),
                "best_epoch": int(self.best_epoch), "stopped_early": bool(stopped),
                "batch_size": int(c.batch_size), "accumulate": int(c.accumulate),
                "world_size": int(self.ctx.world_size), "lr": float(c.learning_rate),
                "weight_decay": float(c.weight_decay), "seed": int(c.seed), "jitter_px": int(c.jitter_px),
                "point_prob": float(c.point_prob), "flips": c.flips, "intensity_variants": int(c.intensity_variants),
                "loss": f"dice + bce + {c.iou_weight:g} * iou_mse",
            },
            "validation": {
                "prompt": "tight box of the reference mask",
                "nsd_tolerance": float(c.nsd_tolerance),
                "best": _means(self.best_scores),
                "zero_shot": _means(self.zero_shot),
            },
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "toolkit_version": __version__,
            "torch_version": str(torch.__version__),
        }
        if c.strategy == "lora":
            card["lora"] = {"rank": int(c.lora_rank), "alpha": float(c.lora_alpha),
                            "targets": list(c.lora_targets), "layers": len(getattr(self, "lora_layers", [])),
                            "merged_in_best": True}
        return card

    def _write_reports(self) -> None:
        from medsam.training.report import plot_curves, write_metrics_csv

        write_metrics_csv(self.history, self.run_dir / "metrics.csv")
        plot_curves(self.history, self.run_dir / "curves.png",
                    title=f"{self.config.model} {self.config.strategy} fine-tuning")

    def _finish(self, epoch: int, step: int, stopped_early: bool) -> FinetuneResult:
        c, ctx = self.config, self.ctx
        card_path = self.run_dir / ckpt.CARD
        if ctx.is_main:
            card = self._card(epoch, step, stopped_early)
            ckpt.write_json_atomic(card, card_path)
            ckpt.write_json_atomic({"train": self.train_case_ids, "val": self.val_case_ids},
                                   self.run_dir / "split.json")
            self._write_case_scores()
            self.log(f"done: best epoch {self.best_epoch}, val DSC {self.best_dsc:.4f}; "
                     f"{self.run_dir / ckpt.BEST} ({time.perf_counter() - self.t0:.0f} s)")
        barrier(ctx)
        return FinetuneResult(
            run_dir=self.run_dir,
            best_checkpoint=self.run_dir / ckpt.BEST,
            card_path=card_path,
            best_epoch=self.best_epoch,
            best=_means(self.best_scores),
            zero_shot=_means(self.zero_shot),
            epochs_run=epoch,
            steps=step,
            stopped_early=stopped_early,
            seconds=time.perf_counter() - self.t0,
            train_samples=len(self.train),
            val_samples=len(self.val),
            skipped=sum(len(r.skipped) for r in self.reports),
            history=tuple(self.history),
        )

    def _write_case_scores(self) -> None:
        if self.zero_shot is None and self.best_scores is None:
            return
        import csv
        import io

        from medsam.io.atomic import atomic_path

        zero = {s.key: s for s in (self.zero_shot.scores if self.zero_shot else ())}
        best = {s.key: s for s in (self.best_scores.scores if self.best_scores else ())}
        buffer = io.StringIO()
        w = csv.writer(buffer, lineterminator="\n")
        w.writerow(["sample", "dataset", "zero_shot_dsc", "zero_shot_nsd", "zero_shot_nsd_challenge",
                    f"best_dsc (epoch {self.best_epoch})", "best_nsd", "best_nsd_challenge"])
        for key in dict.fromkeys(list(zero) + list(best)):
            z, b = zero.get(key), best.get(key)
            ds = (z or b).dataset  # type: ignore[union-attr]
            w.writerow([key, ds] + [f"{getattr(s, m):.6f}" if s else "" for s in (z, b)
                                    for m in ("dsc", "nsd", "nsd_challenge")])
        with atomic_path(self.run_dir / "validation_cases.csv", overwrite=True) as tmp:
            tmp.write_text(buffer.getvalue())


class _CachedEncodings:
    """encoding_of(i) for validation from the decoder strategy's embedding table."""

    def __init__(self, samples, table: torch.Tensor, rows: list[int], config, device) -> None:
        from medsam.preprocess.geometry import CoordinateTransform

        self.table, self.rows, self.device = table, rows, device
        self.transforms = [CoordinateTransform.for_image(s.mask.shape, config) for s in samples]

    def __call__(self, i: int):
        from medsam.inference.predictor import ImageEncoding

        return ImageEncoding(self.table[self.rows[i]][None].to(self.device), self.transforms[i], f"cached:{i}")


def _collate(items):
    from medsam.training.dataset import collate

    return collate(items)


def _resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and device.type != "cuda":
        raise InputError("amp fp16 needs a CUDA device; use bf16 (or off) on a CPU")
    return amp


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _means(result: ValidationResult | None) -> dict[str, float]:
    if result is None:
        return {}
    return {"dsc": float(result.dsc), "nsd": float(result.nsd), "nsd_challenge": float(result.nsd_challenge),
            "n": int(result.n)}


def _result_record(result: ValidationResult | None) -> list | None:
    if result is None:
        return None
    return [[s.key, s.dataset, float(s.dsc), float(s.nsd), float(s.nsd_challenge)] for s in result.scores]


def _result_from_record(record: list | None) -> ValidationResult | None:
    if record is None:
        return None
    from medsam.training.validate import SampleScore

    scores = tuple(SampleScore(str(k), str(d), float(a), float(b), float(c)) for k, d, a, b, c in record)
    if not scores:
        return ValidationResult(math.nan, math.nan, math.nan, 0)
    arr = np.array([[s.dsc, s.nsd, s.nsd_challenge] for s in scores])
    return ValidationResult(*(float(v) for v in arr.mean(axis=0)), len(scores), scores)
