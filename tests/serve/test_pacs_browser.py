"""The PACS part of the annotation page in a real headless chromium (Playwright), against a real Orthanc: open
the PACS panel, pick the study and its series, draw a box, accept, "Export to PACS", and find the stored
DICOM-SEG in Orthanc referencing the series."""

from __future__ import annotations

from pathlib import Path

import pytest

from .live import live_server
from .test_browser import CHROMIUM, FLAGS
from .test_pacs import SHAPE, OracleModel  # noqa: F401 - pacs_ct is a fixture of that module
from .test_pacs import pacs_ct  # noqa: F401

pytestmark = pytest.mark.orthanc


def test_open_from_pacs_and_export_back_in_the_browser(make_app, pacs_ct, pacs_env, tmp_path):  # noqa: F811
    if not CHROMIUM.is_file():
        pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get where Debian's registry is reachable)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (scripts/setup.sh)")
    import highdicom as hd

    series, block = pacs_ct
    app = make_app(model=OracleModel(), dicomweb_url=pacs_env.dicomweb_url)
    with live_server(app) as url, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_selector("#pacs-button:not([hidden])", timeout=30_000)
            page.click("#pacs-button")
            page.wait_for_selector(f'#pacs-studies option[value="{series.study_uid}"]', state="attached", timeout=30_000)
            page.select_option("#pacs-studies", series.study_uid)
            page.wait_for_selector(f'#pacs-series option[value="{series.series_uid}"]', state="attached", timeout=30_000)
            page.select_option("#pacs-series", series.series_uid)
            page.click("#pacs-open")
            page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
            assert page.is_visible("#pacs-export-row")
            assert "block CT" in page.inner_text("#session-name")

            canvas = page.locator("#view")
            frame = canvas.bounding_box()
            sx, sy = frame["width"] / SHAPE[2], frame["height"] / SHAPE[1]
            z = int(page.input_value("#slice"))
            assert block[z].any()  # the page opens the middle slice, which holds the block
            # a box around the block with a margin (the stand-in model segments the bright pixels inside it)
            page.mouse.move(frame["x"] + 3.5 * sx, frame["y"] + 5.5 * sy)
            page.mouse.down()
            page.mouse.move(frame["x"] + 15 * sx, frame["y"] + 15 * sy)
            page.mouse.move(frame["x"] + 27.5 * sx, frame["y"] + 25.5 * sy)
            page.mouse.up()
            page.wait_for_selector('#status[data-state="mask"]', timeout=60_000)
            page.fill("#label-name", "block")
            canvas.focus()
            page.keyboard.press("Enter")
            page.wait_for_selector('#status[data-state="accepted"]', timeout=60_000)

            page.select_option("#pacs-format", "dicom-seg")
            page.click("#pacs-store")
            page.wait_for_selector('#status[data-state="stored"]', timeout=60_000)
            sop_uid = page.get_attribute("#status", "data-stored")
            page.screenshot(path=str(tmp_path / "pacs.png"))
            assert not problems, problems
        finally:
            context.close()

    ((level, oid),) = pacs_env.lookup(sop_uid)
    path = Path(tmp_path / "seg.dcm")
    path.write_bytes(pacs_env.get(f"/instances/{oid}/file"))
    seg = hd.seg.segread(path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["block"]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=series.sop_uids, combine_segments=True, relabel=False)
    assert (back[z] > 0).tolist() == block[z].tolist() and not back[[k for k in range(SHAPE[0]) if k != z]].any()
