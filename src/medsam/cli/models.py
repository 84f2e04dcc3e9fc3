"""`medsam models`: the registered variants, their input size, parameters and weight availability."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list model variants and whether their weights are available here")
    parser.set_defaults(func=run)


def parameter_count(spec) -> int:
    import torch

    from medsam.models.registry import build_architecture

    with torch.device("meta"):  # shapes only, no memory
        model = build_architecture(spec)
    return sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> int:
    from medsam.models.registry import get_spec, list_models, weights_available

    rows = []
    for name in list_models():
        spec = get_spec(name)
        rows.append((name, f"{spec.input_size}px", f"{parameter_count(spec) / 1e6:.2f}M", weights_available(spec), spec.description))
    widths = [max(len(r[i]) for r in rows + [("name", "input", "params", "weights", "")]) for i in range(4)]
    header = ("name", "input", "params", "weights")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  description")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    return 0
