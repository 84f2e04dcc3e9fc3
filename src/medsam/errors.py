"""Errors meant for people.

Every error the toolkit raises on purpose derives from :class:`MedsamError`. The message says which
input is wrong, what is wrong with it and what to do; the CLI prints it and exits with status 2.
"""

from __future__ import annotations


class MedsamError(Exception):
    """Base class of all toolkit errors. ``str(err)`` is the message a user sees."""

    exit_code = 2


class InputError(MedsamError, ValueError):
    """An input file or array cannot be used (unreadable, wrong shape, empty, NaN, ...)."""


class PromptError(MedsamError, ValueError):
    """A prompt (box, points, mask) is malformed or does not fit the image."""


class ModelNotFoundError(MedsamError, KeyError):
    """An unknown model name was asked for."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CheckpointError(MedsamError):
    """A checkpoint file is missing, corrupt, of the wrong model or fails its checksum."""


class OutputError(MedsamError):
    """An output cannot be written (exists and overwrite was not asked, folder missing, ...)."""


class BackendUnavailableError(MedsamError):
    """An optional execution engine (onnxruntime, openvino, ...) is not installed or cannot run here."""


class RemoteServiceError(MedsamError):
    """A remote service (a PACS over DICOMweb) cannot be reached, refuses the credentials, times out after its
    retries, or answers with something unusable (a failed store, an object that does not read back)."""
