"""End to end in a real headless browser: Debian's chromium driven by Playwright (installed by
scripts/setup.sh). Load a CT slice from ../shared/data, draw a box, see the mask, add a negative click,
accept under a label, export, check the exported file, and keep a screenshot."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from ._helpers import png_array
from .live import live_server

CHROMIUM = Path("/usr/bin/chromium")
PROJECT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CASE_IMAGE = "ct_slices/images/amos_0004_75.png"


def liver_box(shared: Path) -> list[float]:
    with open(shared / "golden" / "lite_medsam_2d.csv") as fh:
        for row in csv.DictReader(fh):
            if row["case"] == "amos_0004_75_liver_000":
                return [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
    raise AssertionError("the liver case is missing from the golden csv")


@pytest.mark.slow
def test_annotate_in_browser(shared_dir, lite_medsam, make_app, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get where Debian's registry is reachable)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (scripts/setup.sh)")
    image_path = shared_dir / "data" / CASE_IMAGE
    if not image_path.is_file():
        pytest.skip(f"{image_path} is absent")
    try:
        box = liver_box(shared_dir)
    except (FileNotFoundError, KeyError):
        box = [153.0, 237.0, 221.0, 294.0]

    app = make_app(model=lite_medsam, data_root=shared_dir / "data", warm_up=True)
    with live_server(app) as url, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(url + "/")
            page.set_input_files("#file-input", str(image_path))
            page.wait_for_selector('#status[data-state="ready"]', timeout=180_000)
            canvas = page.locator("#view")
            frame = canvas.bounding_box()
            scale_x, scale_y = frame["width"] / 512, frame["height"] / 512

            def at(x: float, y: float) -> tuple[float, float]:
                return frame["x"] + (x + 0.5) * scale_x, frame["y"] + (y + 0.5) * scale_y

            region = "({x0}, {y0}, {w}, {h})".format(x0=int(box[0]), y0=int(box[1]), w=int(box[2] - box[0]), h=int(box[3] - box[1]))
            read_pixels = f"Array.from(document.getElementById('view').getContext('2d').getImageData{region}.data)"
            before = np.array(page.evaluate(read_pixels), dtype=np.int32)

            page.mouse.move(*at(box[0], box[1]))
            page.mouse.down()
            page.mouse.move(*at((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            page.mouse.move(*at(box[2], box[3]))
            page.mouse.up()
            page.wait_for_selector('#status[data-state="mask"]', timeout=60_000)
            area_box = int(page.get_attribute("#status", "data-area"))
            assert area_box > 100
            after = np.array(page.evaluate(read_pixels), dtype=np.int32).reshape(-1, 4)
            changed = np.abs(after - before.reshape(-1, 4))[:, :3].sum(axis=1) > 30
            assert changed.sum() > 0.5 * area_box * 0.5  # the mask is painted on the canvas inside the box
            reddish = (after[:, 0] > after[:, 1] + 40) & changed
            assert reddish.sum() > 0.3 * area_box * 0.5

            # a negative click on the mask's lower right part
            page.mouse.click(*at(box[2] - 6, box[3] - 6), button="right")
            page.wait_for_function("document.getElementById('status').dataset.step === '1'", timeout=60_000)
            page.wait_for_selector('#status[data-state="mask"]', timeout=60_000)
            area_refined = int(page.get_attribute("#status", "data-area"))
            latency = page.get_attribute("#latency", "data-total-ms")
            assert latency is not None and float(latency) > 0
            draft_shot = tmp_path / "draft.png"
            page.screenshot(path=str(draft_shot))  # box, clicks and the draft mask

            page.fill("#label-name", "liver")
            canvas.focus()
            page.keyboard.press("Enter")
            page.wait_for_selector('#status[data-state="accepted"]', timeout=60_000)
            assert page.locator("#labels li .name").first.inner_text() == "liver"

            page.select_option("#export-format", "png")
            page.click("#export")
            page.wait_for_selector('#status[data-state="exported"]', timeout=60_000)
            name = page.get_attribute("#status", "data-export")
            assert page.locator(f'#exports a[data-name="{name}"]').count() == 1
            shot = tmp_path / "annotate.png"
            page.screenshot(path=str(shot))
            assert not problems, problems
        finally:
            context.close()

    sessions = [p for p in (tmp_path / "sessions").iterdir() if not p.name.startswith(".")]
    assert len(sessions) == 1
    exported = png_array((sessions[0] / "exports" / name).read_bytes())
    assert exported.shape == (512, 512) and set(np.unique(exported)) <= {0, 1}
    assert int((exported == 1).sum()) == area_refined
    ys, xs = np.nonzero(exported == 1)
    assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2 and ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2
    runs = PROJECT / "runs"
    runs.mkdir(exist_ok=True)
    shutil.copyfile(draft_shot, runs / "serve_browser_draft.png")
    shutil.copyfile(shot, runs / "serve_browser_accepted.png")


def test_click_on_a_propagated_slice_re_propagates_in_browser(make_app, data_root, tmp_path):
    """A propagated label that ran into a dimmer tube; a right click on the tube on slice 20 removes it there and
    on the slices its chain reached, the accepted slice stays (oracle model, synthetic volume)."""
    if not CHROMIUM.is_file():
        pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get where Debian's registry is reachable)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (scripts/setup.sh)")
    import httpx
    import SimpleITK as sitk

    from .test_corrections import _oracle, ball_and_tube

    sitk.WriteImage(sitk.GetImageFromArray(ball_and_tube()), str(data_root / "tube.nrrd"))
    app = make_app(model=_oracle(), refinement="box_update")
    with live_server(app) as url, sync_api.sync_playwright() as pw:
        api = httpx.Client(base_url=url, timeout=30)
        sid = api.post("/api/sessions", json={"path": "tube.nrrd"}).json()["id"]
        assert api.post(f"/api/sessions/{sid}/slices/10/prompts", json={"box": [22, 22, 38, 38]}).status_code == 200
        assert api.post(f"/api/sessions/{sid}/slices/10/accept", json={"label": "ball"}).status_code == 200
        job = api.post(f"/api/sessions/{sid}/propagate", json={"label": "ball", "z_range": [0, 23]}).json()
        for _ in range(600):
            job = api.get(f"/api/sessions/{sid}/jobs/{job['id']}").json()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert job["state"] == "done" and 23 in api.get(f"/api/sessions/{sid}/labels").json()["labels"][0]["slices"]
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1100, "height": 800},
        )
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(f"{url}/#session={sid}")
            page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
            assert page.is_checked("#correct3d")  # a propagated label: clicks correct it in 3D
            page.evaluate("showSlice(20)")
            page.wait_for_function("document.getElementById('slice-label').textContent.startsWith('z 20')")
            frame = page.locator("#view").bounding_box()
            width, height = page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]")
            page.mouse.click(frame["x"] + 30.5 * frame["width"] / width, frame["y"] + 30.5 * frame["height"] / height,
                             button="right")
            page.wait_for_selector('#status[data-state="corrected"]', timeout=60_000)
            changed = page.get_attribute("#status", "data-changed")
            page.screenshot(path=str(tmp_path / "corrected.png"))
            assert not problems, problems
        finally:
            context.close()
        labels = api.get(f"/api/sessions/{sid}/labels").json()["labels"][0]
    assert changed == "20,21,22,23"
    assert max(labels["slices"]) == 19 and labels["accepted_slices"] == [10] and labels["corrected_slices"] == [20]
    runs = PROJECT / "runs"
    runs.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "corrected.png", runs / "serve_browser_3d_correction.png")
