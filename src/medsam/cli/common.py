"""Options shared by several subcommands."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} threads: give 1 or more")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from medsam.inference.engines.options import BACKENDS, PRECISIONS

    group = parser.add_argument_group("model")
    group.add_argument("--model", default="lite_medsam", help="model variant (see `medsam models`); default lite_medsam")
    group.add_argument("--checkpoint", default=None, help="weights file or Hugging Face folder; default: the variant's own")
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N; default: CUDA when available")
    add_execution_options(group)


def add_execution_options(group) -> None:
    """--precision, --backend, --threads: how the model runs (medsam.inference.engines.ExecutionOptions)."""
    from medsam.inference.engines.options import BACKENDS, PRECISIONS

    group.add_argument(
        "--precision", choices=("auto",) + PRECISIONS, default="auto",
        help="auto (default) = fp32. bf16 is about twice as fast with OpenVINO where the CPU has native bf16 "
        "(AMX/AVX512-BF16) but can move ambiguous masks; `--precision fp32 --backend torch` is the exact reference path",
    )
    group.add_argument(
        "--backend", choices=("auto",) + BACKENDS, default="auto",
        help="auto (default): openvino if installed, else onnxruntime, else torch; a missing engine falls back to torch",
    )
    group.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for the model; default: all cores")


def load_model(args: argparse.Namespace):
    from medsam.models.registry import build_model

    return build_model(args.model, checkpoint=args.checkpoint, device=args.device)


def execution_options(args: argparse.Namespace):
    from medsam.inference.engines.options import ExecutionOptions

    return ExecutionOptions(
        getattr(args, "precision", "auto"), getattr(args, "backend", "auto"), getattr(args, "threads", None)
    )


# Subcommands that propagate through stacks: there a SAM 2 family model comes in a MemoryPredictor.
MEMORY_COMMANDS = ("segment-volume", "segment-video")


def load_predictor(args: argparse.Namespace, **predictor_kwargs):
    """The model of ``--model/--checkpoint/--device`` in a Predictor running ``--precision/--backend/--threads``.

    A fallback (engine not installed, ...) is reported on stderr as a note, not as a Python warning.
    A SAM 2 family model comes in a ``MemoryPredictor`` (PyTorch, fp32) for the commands of MEMORY_COMMANDS;
    the other commands refuse it with what to use instead.
    """
    import sys
    import warnings

    from medsam.inference.engines import make_predictor
    from medsam.models.registry import get_spec

    if get_spec(args.model).family == "sam2":
        return _memory_predictor(args, getattr(args, "command", None) in MEMORY_COMMANDS)
    model = load_model(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        predictor = make_predictor(model, execution_options(args), **predictor_kwargs)
    for warning in caught:
        print(f"medsam: note: {warning.message}", file=sys.stderr)
    return predictor


def _memory_predictor(args: argparse.Namespace, memory_ok: bool):
    import sys

    from medsam.errors import MedsamError

    if not memory_ok:
        raise MedsamError(
            f"--model {args.model} is a SAM 2 memory model for videos and volumes: use it with `medsam segment-video`, "
            "`medsam segment-volume` or `medsam evaluate` on 3D cases; for 2D images choose lite_medsam, medsam_vit_b "
            "or sam_vit_b/l/h"
        )
    from medsam.inference.memory_video import MemoryPredictor

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))
    if getattr(args, "precision", "auto") not in ("auto", "fp32") or getattr(args, "backend", "auto") not in ("auto", "torch"):
        print(f"medsam: note: --precision/--backend apply to image models; {args.model} runs in PyTorch fp32",
              file=sys.stderr)
    return MemoryPredictor(load_model(args))
