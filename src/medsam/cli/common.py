"""Options shared by several subcommands."""

from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="lite_medsam", help="model variant (see `medsam models`); default lite_medsam")
    group.add_argument("--checkpoint", default=None, help="weights file or Hugging Face folder; default: the variant's own")
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N; default: CUDA when available")


def load_model(args: argparse.Namespace):
    from medsam.models.registry import build_model

    return build_model(args.model, checkpoint=args.checkpoint, device=args.device)
