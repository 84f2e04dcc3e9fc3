"""Errors of the server, each answered with its own HTTP status (see ``app.ERROR_STATUS``)."""

from __future__ import annotations

from medsam.errors import InputError, MedsamError


class Conflict(MedsamError):
    """The request does not fit the session's state (409)."""


class NotFound(MedsamError):
    """An unknown session, slice, label, job or export (404)."""


class ForbiddenPath(InputError):
    """A path outside the data root, or with '..' in it (403)."""


class UploadTooLarge(InputError):
    """An upload over the size limit (413)."""
