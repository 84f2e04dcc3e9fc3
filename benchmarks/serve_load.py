"""Load check of the annotation server: N concurrent clients prompting for D seconds over real HTTP.

    python benchmarks/serve_load.py                       # 20 clients, 60 s, lite_medsam, ../shared/data
    python benchmarks/serve_load.py --clients 4 --duration 10 --model tiny_lite     # a quick try

It starts ``medsam serve`` in a subprocess on a free loopback port (or uses ``--url`` with ``--sessions-dir``),
opens sessions on CT slices of ../shared/data (2D, boxes around reference organ masks) and on a CT lesion volume (a
few slices around its middle, boxes from its ground truth), encodes those slices first, then:

1. one client alone: box -> mask latency on an encoded slice, measured by the server (``latency_ms``) and
   as the round trip including decoding the returned mask, against the 150 ms target;
2. the load: each client shares a session with others, sends box prompts and clicks on a few slices with
   its own draft object, and accepts some masks under its own label;
3. the check: no errors, and no lost accepted masks: the label volume the server serves and the one saved in
   the session folder equal the accepts replayed in the order of their revisions.

Prints median / p95 latencies per request kind, the machine load (``os.getloadavg``) before and after, and
writes everything as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
IMAGES = ["amos_0004_75", "amos_0006_90", "amos_0507_31", "s0114_111"]
VOLUME = "ct_lesions_3d/CT_Lesion_000010_01_01_078-090.npz"


@dataclass
class Target:
    session: str
    slices: list[tuple[int, list[list[float]]]]  # (z, boxes on that slice)
    shape: tuple[int, int, int]


@dataclass
class Record:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    server: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    accepts: list[tuple[str, int, str, int, np.ndarray]] = field(default_factory=list)  # session, revision, label, z, mask
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, server_ms: float | None = None) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds * 1000.0)
            if server_ms is not None:
                self.server.setdefault(kind, []).append(server_ms)


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": int(a.size), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args, sessions_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "medsam.cli", "serve", "--port", str(port), "--model", args.model,
        "--data-root", str(SHARED / "data"), "--sessions-dir", str(sessions_dir), "--prefetch", "0",
        "--log-level", "warning", "--decode-threads", str(args.decode_threads),
        "--precision", args.precision, "--backend", args.backend,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start in 180 s")


def organ_boxes(per_image: int = 4) -> dict[str, list[list[float]]]:
    """Tight boxes of a few reference organ masks per CT slice (cases.csv of ../shared/data)."""
    from PIL import Image

    boxes: dict[str, list[list[float]]] = {}
    with open(SHARED / "data" / "cases.csv") as fh:
        for row in csv.DictReader(fh):
            stem = Path(row["image"]).stem
            if row["dataset"] != "ct_slices" or stem not in IMAGES or len(boxes.get(stem, [])) >= per_image:
                continue
            with Image.open(SHARED / "data" / row["mask"]) as img:
                mask = np.asarray(img) == int(row["label"])
            ys, xs = np.nonzero(mask)
            if ys.size > 50:
                boxes.setdefault(stem, []).append([float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())])
    return boxes


def volume_slices(count: int = 3) -> list[tuple[int, list[list[float]]]]:
    with np.load(SHARED / "data" / VOLUME) as data:
        gts = data["gts"]
    zs = np.flatnonzero(gts.reshape(gts.shape[0], -1).any(axis=1))
    middle = int(zs[len(zs) // 2])
    out = []
    for z in range(middle - count // 2, middle - count // 2 + count):
        ys, xs = np.nonzero(gts[z])
        if ys.size:
            out.append((z, [[float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]]))
    return out


def setup_targets(client) -> tuple[list[Target], dict]:
    targets = []
    encode_ms = []
    for stem, boxes in organ_boxes().items():
        s = client.open_path(f"ct_slices/images/{stem}.png")
        targets.append(Target(s.id, [(0, boxes)], tuple(s.shape)))
    s = client.open_path(VOLUME)
    targets.append(Target(s.id, volume_slices(), tuple(s.shape)))
    for t in targets:
        for z, _ in t.slices:
            encode_ms.append(client.encode(t.session, z).encode_ms)
    return targets, stats(encode_ms)


def jitter(box: list[float], rng: random.Random, shape: tuple[int, int, int], px: float = 4.0) -> list[float]:
    h, w = shape[1], shape[2]
    x0, y0, x1, y1 = (v + rng.uniform(-px, px) for v in box)
    return [max(0.0, x0), max(0.0, y0), min(w - 1.0, max(x0 + 2, x1)), min(h - 1.0, max(y0 + 2, y1))]


def single_client(url: str, target: Target, repeats: int) -> dict:
    from medsam.client import MedsamClient, mask_array

    rng = random.Random(0)
    z, boxes = target.slices[0]
    server, trip, cpu = [], [], []
    with MedsamClient(url) as c:
        for fmt in ("rle",):
            for _ in range(repeats):
                box = jitter(boxes[0], rng, target.shape)
                t0 = time.perf_counter()
                r = c.prompt(target.session, z, box=box, object_id=999, mask_format=fmt)
                mask = mask_array(r)
                trip.append((time.perf_counter() - t0) * 1000.0)
                server.append(r.latency_ms)
                cpu.append(r.decode_cpu_ms)
                assert mask is not None
    return {"server_ms": stats(server), "round_trip_ms": stats(trip), "decode_cpu_ms": stats(cpu), "target_ms": 150.0}


def client_loop(k: int, url: str, targets: list[Target], deadline: float, record: Record, accept_every: int) -> None:
    from medsam.client import ApiError, MedsamClient, mask_array

    rng = random.Random(1000 + k)
    target = targets[k % len(targets)]
    label = f"client{k:02d}"
    with MedsamClient(url, timeout=300) as c:
        n = 0
        while time.monotonic() < deadline:
            z, boxes = target.slices[rng.randrange(len(target.slices))]
            box = jitter(boxes[rng.randrange(len(boxes))], rng, target.shape)
            try:
                t0 = time.perf_counter()
                r = c.prompt(target.session, z, box=box, object_id=k, mask_format="rle")
                record.add("box", time.perf_counter() - t0, r.latency_ms)
                if rng.random() < 0.5:
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    positive = rng.random() < 0.5
                    point = [cx, cy] if positive else [box[0] + 1, box[1] + 1]
                    t0 = time.perf_counter()
                    r = c.refine(target.session, z, points=[point], point_labels=[int(positive)], object_id=k, mask_format="rle")
                    record.add("click", time.perf_counter() - t0, r.latency_ms)
                n += 1
                if n % accept_every == 0 and r.area_px > 0:
                    mask = mask_array(r)
                    t0 = time.perf_counter()
                    acc = c.accept(target.session, z, label=label, object_id=k)
                    record.add("accept", time.perf_counter() - t0)
                    with record.lock:
                        record.accepts.append((target.session, acc.revision, label, z, mask))
                    if acc.area_px != int(mask.sum()):
                        record.errors.append(f"client {k}: accepted {acc.area_px} px but its mask had {int(mask.sum())}")
                if rng.random() < 0.1:
                    t0 = time.perf_counter()
                    c.labels(target.session)
                    record.add("labels", time.perf_counter() - t0)
            except (ApiError, OSError, Exception) as exc:  # noqa: BLE001 - every failure is counted
                with record.lock:
                    record.errors.append(f"client {k}: {type(exc).__name__}: {exc}")


def verify(url: str, targets: list[Target], record: Record, sessions_dir: Path | None) -> dict:
    from medsam.client import MedsamClient

    lost = 0
    checked = 0
    problems = []
    with MedsamClient(url) as c:
        for t in targets:
            accepts = sorted((a for a in record.accepts if a[0] == t.session), key=lambda a: a[1])
            listed = c.labels(t.session)
            values = {label.name: label.value for label in listed.labels}
            expected = np.zeros(t.shape, np.uint8)
            for _, _, name, z, mask in accepts:
                if name not in values:
                    problems.append(f"session {t.session}: label {name} is missing")
                    continue
                plane = expected[z]
                plane[plane == values[name]] = 0
                plane[mask] = values[name]
            revisions = [a[1] for a in accepts]
            if revisions != list(range(1, len(revisions) + 1)):
                problems.append(f"session {t.session}: revisions {revisions[:5]}... are not 1..{len(revisions)}")
            zs = sorted({z for z, _ in t.slices})
            served = {z: c.slice_labels(t.session, z) for z in zs}
            saved = None
            if sessions_dir is not None:
                with np.load(sessions_dir / t.session / "labels.npz") as data:
                    saved = np.zeros(t.shape, np.uint8)
                    if data["z"].size:
                        saved[data["z"]] = data["slices"]
            for _, _, name, z, _ in accepts:
                checked += 1
                if name not in values:
                    lost += 1
                    continue
                want = expected[z] == values[name]
                if not np.array_equal(served[z] == values[name], want) or (
                    saved is not None and not np.array_equal(saved[z] == values[name], want)
                ):
                    lost += 1
    return {"accepts_checked": checked, "lost": lost, "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--decode-threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="the server's --precision (auto = the team's fast path)")
    parser.add_argument("--backend", default="auto", help="the server's --backend (torch with fp32 = the exact path)")
    parser.add_argument("--accept-every", type=int, default=3, help="each client accepts every Nth prompt")
    parser.add_argument("--single-repeats", type=int, default=30)
    parser.add_argument("--url", default=None, help="use a running server (then give --sessions-dir to check its files)")
    parser.add_argument("--sessions-dir", default=None)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if not (SHARED / "data" / "cases.csv").is_file():
        print(f"skipped: {SHARED / 'data'} is absent")
        return 0

    tmp = None
    proc = None
    if args.url:
        url = args.url
        sessions_dir = Path(args.sessions_dir) if args.sessions_dir else None
    else:
        tmp = Path(tempfile.mkdtemp(prefix="medsam-serve-load-"))
        sessions_dir = tmp / "sessions"
        proc, url = start_server(args, sessions_dir)
    from medsam.client import MedsamClient

    try:
        with MedsamClient(url) as c:
            health = c.health()
            targets, encode = setup_targets(c)
        load_before = os.getloadavg()
        single = single_client(url, targets[0], args.single_repeats)
        record = Record()
        deadline = time.monotonic() + args.duration
        threads = [
            threading.Thread(target=client_loop, args=(k, url, targets, deadline, record, args.accept_every))
            for k in range(args.clients)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        load_after = os.getloadavg()
        check = verify(url, targets, record, sessions_dir)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    requests = sum(len(v) for v in record.latencies.values())
    result = {
        "model": health.model,
        "engine": health.engine,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "decode_threads": args.decode_threads,
        "sessions": len(targets),
        "machine_load_1_5_15_before": [round(v, 2) for v in load_before],
        "machine_load_1_5_15_after": [round(v, 2) for v in load_after],
        "cpu_count": os.cpu_count(),
        "encode_ms": encode,
        "single_client_box_to_mask": single,
        "requests": requests,
        "requests_per_s": round(requests / max(elapsed, 1e-9), 2),
        "round_trip_ms": {k: stats(v) for k, v in sorted(record.latencies.items())},
        "server_ms": {k: stats(v) for k, v in sorted(record.server.items())},
        "errors": len(record.errors),
        "error_samples": record.errors[:5],
        "accepted_masks": check,
    }
    print(f"model {result['model']} on {result['engine']}, {args.clients} clients for {elapsed:.0f} s, {len(targets)} sessions, load before {load_before[0]:.1f} after {load_after[0]:.1f} on {os.cpu_count()} cores")
    s = single
    print(
        f"one client alone, box -> mask: server median {s['server_ms']['median']:.0f} ms (p95 {s['server_ms']['p95']:.0f}), "
        f"round trip incl. mask decode median {s['round_trip_ms']['median']:.0f} ms (p95 {s['round_trip_ms']['p95']:.0f}); "
        f"decoder CPU time median {s['decode_cpu_ms']['median']:.0f} ms; target 150 ms"
    )
    print(f"{requests} requests ({result['requests_per_s']}/s), {len(record.errors)} errors")
    for kind, st in result["round_trip_ms"].items():
        srv = result["server_ms"].get(kind)
        extra = f"; server median {srv['median']:.0f} p95 {srv['p95']:.0f}" if srv and srv.get("n") else ""
        print(f"  {kind:7s} n={st['n']:5d} round trip median {st['median']:7.0f} ms p95 {st['p95']:7.0f} ms max {st['max']:7.0f}{extra}")
    print(f"accepted masks: {check['accepts_checked']} checked, {check['lost']} lost; problems: {check['problems'] or 'none'}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0 if not record.errors and check["lost"] == 0 and not check["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
