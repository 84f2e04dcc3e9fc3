"""Many requests at once on one session keep it consistent: every accepted mask is in the saved labels,
exactly as the accepts ordered by their revision would leave them, and a restart reads the same."""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from medsam.client import MedsamClient, mask_array

from ._helpers import png_array
from .live import live_server

THREADS = 8
ROUNDS = 4
BOXES = ([18, 12, 42, 36], [5, 5, 30, 30], [30, 10, 60, 40], [10, 20, 50, 45])


def replay(shape, accepts, values):
    """The label volume that the accepts (replace mode) leave when applied in revision order."""
    labels = np.zeros(shape, np.uint8)
    for _, name, z, mask in sorted(accepts, key=lambda a: a[0]):
        plane = labels[z]
        plane[plane == values[name]] = 0
        plane[mask] = values[name]
    return labels


def test_concurrent_prompts_and_accepts_on_one_session(make_app, tmp_path):
    app = make_app()
    with live_server(app) as url, MedsamClient(url) as setup:
        sid = setup.open_path("ball.nii.gz").id
        accepts: list[tuple[int, str, int, np.ndarray]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            try:
                with MedsamClient(url) as c:
                    for r in range(ROUNDS):
                        z = (k + r) % 3 + 3
                        box = BOXES[(k + r) % len(BOXES)]
                        c.prompt(sid, z, box=box, object_id=k, mask_format="none")
                        resp = c.refine(sid, z, points=[[box[0] + 6, box[1] + 6]], point_labels=[r % 2], object_id=k, mask_format="rle")
                        mask = mask_array(resp)
                        if r % 2 == 0:
                            undone = c.undo(sid, z, object_id=k, mask_format="rle")
                            redone = c.redo(sid, z, object_id=k, mask_format="rle")
                            assert undone.step == redone.step - 1
                            assert np.array_equal(mask_array(redone), mask)
                        c.slice_png(sid, z, prefetch=False)
                        c.labels(sid)
                        acc = c.accept(sid, z, label=f"obj{k}", object_id=k)
                        assert acc.z == z and acc.area_px == int(mask.sum())
                        assert acc.mask_sha1 == hashlib.sha1(mask.astype(np.uint8).tobytes()).hexdigest()
                        with lock:
                            accepts.append((acc.revision, f"obj{k}", z, mask))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors[:3]
        revisions = sorted(a[0] for a in accepts)
        assert revisions == list(range(1, THREADS * ROUNDS + 1))  # every save has its own revision

        listed = setup.labels(sid)
        values = {label.name: label.value for label in listed.labels}
        assert set(values) == {f"obj{k}" for k in range(THREADS)} and listed.revision == THREADS * ROUNDS
        expected = replay((8, 48, 64), accepts, values)
        served = np.stack([setup.slice_labels(sid, z) for z in range(8)])
        assert np.array_equal(served, expected)

    with np.load(tmp_path / "sessions" / sid / "labels.npz") as saved:
        on_disk = np.zeros((8, 48, 64), np.uint8)
        on_disk[saved["z"]] = saved["slices"]
        assert int(saved["revision"]) == THREADS * ROUNDS
    assert np.array_equal(on_disk, expected)

    from fastapi.testclient import TestClient

    with TestClient(make_app(), base_url="http://127.0.0.1") as again:  # a restarted server reads the same
        reopened = np.stack([png_array(again.get(f"/api/sessions/{sid}/slices/{z}/labels").content) for z in range(8)])
    assert np.array_equal(reopened, expected)
