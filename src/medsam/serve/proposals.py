"""Automatic proposals ("segment everything") for a person to pick, name or delete.

Routes are added only when ``medsam.inference.everything`` exists; otherwise the endpoints answer 501
with a message saying so.
"""

from __future__ import annotations

from typing import Any, Callable

from medsam.errors import BackendUnavailableError
from medsam.serve import schemas as S


def add_proposal_routes(app: Any, state: Any, accept_mask: Callable[..., Any]) -> None:
    @app.post("/api/sessions/{sid}/slices/{z}/proposals", response_model=S.ProposalList, tags=["proposals"])
    def proposals(sid: str, z: int, req: S.ProposalRequest) -> S.ProposalList:
        raise BackendUnavailableError(
            "automatic proposals need medsam.inference.everything, which this installation does not have yet"
        )
