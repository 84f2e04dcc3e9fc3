"""`medsam finetune --data MANIFEST|FOLDER|NPZ_DIR --strategy decoder|full|lora -o RUN_DIR`.

Examples:

    # the MedSAM recipe on the first 40 fetal-head cases, validated on the other 20
    medsam finetune --data ../shared/data/cases.csv --datasets ultrasound_fetal_head --train-first 40 \
        --strategy decoder --epochs 12 -o runs/fetal_decoder
    # LoRA on the encoder (rank 8 on qkv/proj/fc1/fc2) plus the decoder, random 20% validation split
    medsam finetune --data my_cases/ --strategy lora --lora-rank 8 --epochs 5 -o runs/mine_lora
    # continue (or extend) a run
    medsam finetune --resume runs/fetal_decoder --epochs 20
    # several GPUs (or CPU processes with gloo): the same command under torchrun
    torchrun --nproc_per_node 4 -m medsam.cli finetune --data ... -o runs/ddp

The run folder gets best.pt (load it anywhere with --checkpoint), model_card.json, last.pt (resume state),
metrics.csv, curves.png, validation_cases.csv, split.json and config.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on your images and masks (decoder, full or LoRA)",
        description="Fine-tune a SAM-family model on image/mask pairs with simulated box prompts. "
        "Data: a cases.csv manifest (dataset,case,modality,dims,image,mask,label,target), a folder with "
        "images/ and masks/, or a folder of .npz cases (imgs + gts). The result, RUN_DIR/best.pt, loads "
        "in every command with --checkpoint.",
    )
    p.add_argument("--data", help="training data: manifest CSV (or its folder), images/+masks/ folder, npz folder")
    p.add_argument("-o", "--output", help="run folder to create (must be new or empty)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved settings "
                   "(--epochs, --patience and --device may change)")
    m = p.add_argument_group("model")  # not add_model_options: inference engines and precisions do not train
    m.add_argument("--model", default="lite_medsam", help="model variant to start from (see `medsam models`); default lite_medsam")
    m.add_argument("--checkpoint", default=None, help="weights to start from; default: the variant's own")
    m.add_argument("--device", default=None, help="cpu, cuda or cuda:N; default: CUDA when available")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's choice; "
                   "1 is often fastest on a busy machine)")
    p.add_argument("--strategy", choices=("decoder", "full", "lora"), default=None,
                   help="decoder: frozen encoders, cached embeddings (default); full: encoder + decoder; "
                   "lora: adapters on the encoder + decoder")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=None, help="epochs (default 10)")
    g.add_argument("--batch-size", type=int, default=None, help="samples per step and process (default 8)")
    g.add_argument("--accumulate", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: decoder 1e-4, full 1e-5, lora 2e-4)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.01)")
    g.add_argument("--warmup", type=float, default=None, help="warm-up as a fraction of all steps (default 0.05)")
    g.add_argument("--clip-grad", type=float, default=None, help="gradient norm clip, 0 = off (default 1.0)")
    g.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None,
                   help="mixed precision: auto = bf16/fp16 on CUDA, off on CPU (default auto)")
    g.add_argument("--patience", type=int, default=None, help="stop after N validations without a better DSC (0 = never)")
    g.add_argument("--val-every", type=int, default=None, help="validate every N epochs (default 1)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    g.add_argument("--num-workers", type=int, default=None, help="data loader worker processes (default 0)")
    g.add_argument("--embedding-cache", default=None, help="folder of cached embeddings (default RUN_DIR/embeddings); "
                   "share it between runs on the same images")
    g.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    d = p.add_argument_group("data selection and validation")
    d.add_argument("--datasets", nargs="+", default=None, metavar="NAME", help="keep only these manifest datasets")
    d.add_argument("--val", dest="val_data", default=None, metavar="DATA", help="validation data (another source)")
    d.add_argument("--val-split", type=float, default=None, help="random validation fraction, by image (default 0.2; 0 = none)")
    d.add_argument("--train-first", type=int, default=None, metavar="N", help="the first N selected cases train ...")
    d.add_argument("--val-first", type=int, default=None, metavar="M", help="... and the next M validate (default: all the rest)")
    d.add_argument("--train-cases", default=None, metavar="IDS|@FILE", help="training case ids, comma-separated or @file (one per line)")
    d.add_argument("--val-cases", default=None, metavar="IDS|@FILE", help="validation case ids, comma-separated or @file")
    d.add_argument("--max-slices-per-volume", type=int, default=None, help="non-empty slices sampled per 3D object (default 16)")
    a = p.add_argument_group("prompts and augmentation")
    a.add_argument("--jitter", type=int, default=None, help="box jitter per side, 0..N px of the original image (default 20)")
    a.add_argument("--point-prob", type=float, default=None, help="chance of adding one interior point to the box (default 0)")
    a.add_argument("--flips", choices=("none", "h", "v", "hv"), default=None, help="flip augmentation (default h)")
    a.add_argument("--intensity-variants", type=int, default=None,
                   help="decoder strategy: intensity-changed variants encoded and cached per image (default 0)")
    a.add_argument("--intensity-prob", type=float, default=None, help="full/lora: chance of an intensity change per step (default 0.5)")
    lo = p.add_argument_group("LoRA")
    lo.add_argument("--lora-rank", type=int, default=None, help="adapter rank (default 8)")
    lo.add_argument("--lora-alpha", type=float, default=None, help="adapter scale numerator (default 16)")
    lo.add_argument("--lora-targets", nargs="+", default=None, metavar="NAME",
                    help="encoder linear layers to adapt (default qkv proj fc1 fc2 lin1 lin2)")
    lo.add_argument("--lora-dropout", type=float, default=None, help="dropout on the adapter input (default 0)")
    p.set_defaults(func=run)


_FIELDS = {  # CLI dest -> FinetuneConfig field
    "strategy": "strategy", "epochs": "epochs", "batch_size": "batch_size", "accumulate": "accumulate", "lr": "lr",
    "weight_decay": "weight_decay", "warmup": "warmup_fraction", "clip_grad": "clip_grad", "amp": "amp",
    "patience": "patience", "val_every": "val_every", "seed": "seed", "num_workers": "num_workers", "threads": "threads",
    "embedding_cache": "embedding_cache", "val_data": "val_data", "val_split": "val_split",
    "train_first": "train_first", "val_first": "val_first", "max_slices_per_volume": "max_slices_per_volume",
    "jitter": "jitter_px", "point_prob": "point_prob", "flips": "flips", "intensity_variants": "intensity_variants",
    "intensity_prob": "intensity_prob", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
}


def _ids(value: str | None) -> tuple[str, ...] | None:
    from medsam.errors import InputError

    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise InputError(f"case list {path} cannot be read: {exc}") from exc
        return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    return tuple(v.strip() for v in value.split(",") if v.strip())


def build_config(args: argparse.Namespace):
    """The FinetuneConfig the arguments ask for (a resumed run starts from its saved config)."""
    import dataclasses

    from medsam.errors import InputError
    from medsam.training.trainer import FinetuneConfig

    given = {field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest) is not None}
    if args.datasets:
        given["datasets"] = tuple(args.datasets)
    if args.lora_targets:
        given["lora_targets"] = tuple(args.lora_targets)
    for dest in ("train_cases", "val_cases"):
        ids = _ids(getattr(args, dest))
        if ids is not None:
            given[dest] = ids
    given["progress"] = not args.quiet
    if args.resume:
        config = FinetuneConfig.load(args.resume)
        allowed = {"epochs", "patience", "val_every", "num_workers", "threads", "embedding_cache", "progress"}
        fixed = sorted(k for k, v in given.items() if k not in allowed and getattr(config, k) != v)
        if fixed or args.data or args.checkpoint or (args.model != "lite_medsam" and args.model != config.model):
            raise InputError(
                f"--resume keeps the run's saved settings; do not change {', '.join(fixed) or '--data/--model/--checkpoint'} "
                "(only --epochs, --patience, --val-every, --device, --threads, --num-workers and --quiet may be given)"
            )
        if args.output and Path(args.output).expanduser().resolve() != Path(args.resume).expanduser().resolve():
            raise InputError("--resume RUN_DIR continues in RUN_DIR; leave out -o or give the same folder")
        return dataclasses.replace(config, **given, device=args.device, resume=True)
    if not args.data or not args.output:
        raise InputError("give --data (the training data) and -o RUN_DIR (a new run folder), or --resume RUN_DIR")
    return FinetuneConfig(data=args.data, output_dir=args.output, model=args.model, checkpoint=args.checkpoint,
                          device=args.device, **given)


def run(args: argparse.Namespace) -> int:
    from medsam.training.trainer import finetune

    config = build_config(args)
    result = finetune(config)
    if result.run_dir and (result.best or result.zero_shot):
        z, b = result.zero_shot, result.best
        if z:
            print(f"zero-shot validation: DSC {z['dsc']:.4f}  NSD {z['nsd']:.4f}  NSD(challenge) {z['nsd_challenge']:.4f}  (n={z['n']})")
        if b:
            print(f"best (epoch {result.best_epoch}):    DSC {b['dsc']:.4f}  NSD {b['nsd']:.4f}  NSD(challenge) {b['nsd_challenge']:.4f}")
    stop = " (stopped early)" if result.stopped_early else ""
    print(f"{result.epochs_run} epochs, {result.steps} steps{stop} in {result.seconds:.0f} s; "
          f"train {result.train_samples} / val {result.val_samples} samples; {result.skipped} skipped")
    print(f"wrote {result.best_checkpoint} (use with --checkpoint) and {result.card_path}")
    return 0
