"""/refine with a box-trained model's strategy (box_update, medsam.inference.refine) on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import InputError
from medsam.serve.masks import decode_payload

from ._helpers import open_session

BOX = [45, 25, 75, 55]


def post(client, sid, what, **body):
    r = client.post(f"/api/sessions/{sid}/slices/0/{what}", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    return out, (decode_payload(out["mask"]) if out.get("mask") is not None else None)


def first_pixel(where: np.ndarray) -> list[int]:
    y, x = np.argwhere(where)[0]
    return [int(x), int(y)]


def test_refine_keeps_the_box_and_honours_the_clicks(make_client):
    client = make_client(refinement="box_update")
    sid = open_session(client)["id"]
    first, mask0 = post(client, sid, "prompts", box=BOX)
    right = np.zeros_like(mask0)
    right[:, 85:] = True
    pos = first_pixel(right & ~mask0)  # outside the mask and the box
    refined, mask1 = post(client, sid, "refine", points=[pos], point_labels=[1])
    assert refined["prompt"]["box"] == BOX and refined["prompt"]["points"] == [pos]
    assert refined["prompt"]["used_mask_prompt"] is False and refined["step"] == 1
    assert mask1[pos[1], pos[0]] and refined["area_px"] == int(mask1.sum())
    inner = np.zeros_like(mask0)
    inner[30:50, 50:70] = True
    neg = first_pixel(mask1 & inner)
    again, mask2 = post(client, sid, "refine", points=[neg], point_labels=[0])
    assert again["prompt"]["box"] == BOX and again["prompt"]["points"] == [pos, neg]
    assert again["prompt"]["point_labels"] == [1, 0]
    assert not mask2[neg[1], neg[0]] and mask2[pos[1], pos[0]]  # the earlier positive click still holds

    # undo goes back to the first refinement, and refining again from there continues its state
    back, mask_back = post(client, sid, "undo")
    assert back["step"] == 1 and np.array_equal(mask_back, mask1)
    redone, mask_redone = post(client, sid, "refine", points=[neg], point_labels=[0])
    assert np.array_equal(mask_redone, mask2) and redone["steps"] == 3


def test_refine_without_a_prompt_starts_from_the_click(make_client):
    client = make_client(refinement="box_update")
    sid = open_session(client)["id"]
    out, mask = post(client, sid, "refine", points=[[60, 40]], point_labels=[1])
    assert out["prompt"]["box"] is None and out["prompt"]["points"] == [[60, 40]] and mask[40, 60]


def test_sam_models_keep_the_sam_recipe(make_client):
    client = make_client()  # tiny_lite's own strategy: sam
    sid = open_session(client)["id"]
    post(client, sid, "prompts", box=BOX)
    refined, _ = post(client, sid, "refine", points=[[70, 50]], point_labels=[0])
    assert refined["prompt"]["used_mask_prompt"] is True


def test_unknown_refinement_is_refused():
    from medsam.serve import ServeSettings

    with pytest.raises(InputError, match="refinement 'lasso'"):
        ServeSettings(refinement="lasso")
