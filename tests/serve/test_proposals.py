"""Automatic proposals ("segment everything") to pick, name or delete, with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.serve.masks import decode_payload

from ._helpers import open_session, png_array

LOOSE = {"grid": 4, "pred_iou_thresh": 0.0, "stability_thresh": 0.0, "mask_format": "rle"}


def test_proposals_pick_name_delete(client, monkeypatch):
    everything = pytest.importorskip("medsam.inference.everything", reason="medsam.inference.everything is not in this tree")
    from medsam.serve import proposals

    def loose_segmenter(predictor, **options):
        """Filters off: the tiny random model's masks are noise, only the plumbing is under test."""
        return everything.AutomaticSegmenter(predictor, skip_background=False, max_background_frac=1.0, min_area_px=0, **options)

    monkeypatch.setattr(proposals, "_segmenter_class", lambda: loose_segmenter)
    sid = open_session(client)["id"]
    r = client.get(f"/api/sessions/{sid}/slices/0/proposals")
    assert r.status_code == 404 and "POST first" in r.json()["detail"]
    first = client.post(f"/api/sessions/{sid}/slices/0/proposals", json=LOOSE)
    assert first.status_code == 200, first.text
    listed = first.json()
    assert listed["computed"] is True and listed["proposals"], "the loose thresholds keep some proposals"
    ids = [p["id"] for p in listed["proposals"]]
    assert ids == list(range(1, len(ids) + 1))
    again = client.post(f"/api/sessions/{sid}/slices/0/proposals", json=LOOSE).json()
    assert again["computed"] is False and [p["id"] for p in again["proposals"]] == ids
    chosen = listed["proposals"][0]
    mask = decode_payload(chosen["mask"])
    assert mask.sum() == chosen["area_px"] > 0

    acc = client.post(f"/api/sessions/{sid}/slices/0/proposals/{chosen['id']}/accept", json={"label": "found"})
    assert acc.status_code == 200, acc.text
    assert acc.json()["label"]["name"] == "found" and acc.json()["area_px"] == chosen["area_px"]
    assert np.array_equal(png_array(client.get(f"/api/sessions/{sid}/slices/0/labels").content) == 1, mask)
    left = client.get(f"/api/sessions/{sid}/slices/0/proposals").json()["proposals"]
    assert chosen["id"] not in [p["id"] for p in left]
    r = client.post(f"/api/sessions/{sid}/slices/0/proposals/{chosen['id']}/accept", json={"label": "again"})
    assert r.status_code == 404
    if left:
        after = client.delete(f"/api/sessions/{sid}/slices/0/proposals/{left[0]['id']}").json()
        assert [p["id"] for p in after["proposals"]] == [p["id"] for p in left[1:]]
    fresh = client.post(f"/api/sessions/{sid}/slices/0/proposals", json={**LOOSE, "refresh": True}).json()
    assert fresh["computed"] is True
    assert client.post(f"/api/sessions/{sid}/slices/0/proposals", json={"grid": 1}).status_code == 422


def test_proposals_unavailable(client, monkeypatch):
    from medsam.errors import BackendUnavailableError
    from medsam.serve import proposals

    def missing():
        raise BackendUnavailableError("automatic proposals need medsam.inference.everything, which this installation lacks")

    monkeypatch.setattr(proposals, "_segmenter_class", missing)
    sid = open_session(client)["id"]
    r = client.post(f"/api/sessions/{sid}/slices/0/proposals", json={})
    assert r.status_code == 501 and "medsam.inference.everything" in r.json()["detail"]
