"""The one exception type a user sees: a one-line message saying what is wrong and what to do."""

from __future__ import annotations


class DisgorgeError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero, with no traceback."""


class NotFound(DisgorgeError):
    """A named thing (source, record, model, request, method, scenario) does not exist."""


class InvalidRequest(DisgorgeError):
    """A request that cannot be carried out as asked (empty selection, whole training set, ...)."""


class IntegrityError(DisgorgeError):
    """Stored data does not match what the ledger recorded (tampered or corrupt files)."""
