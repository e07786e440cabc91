"""Errors the kit raises on purpose. The CLI turns any KitError into one line and exit code 2."""

from __future__ import annotations


class KitError(Exception):
    """Base class: a user-facing error whose message says what, where, and what next."""


class ConfigError(KitError):
    """A config field has an invalid value; the message names the field and the valid values."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


class InputError(KitError):
    """Bad input data, located by file, 1-based data row and column."""

    def __init__(
        self,
        path,
        message: str = "",
        *,
        row: int | None = None,
        column: str | None = None,
        expected: str | None = None,
        got: object = None,
    ):
        self.path, self.row, self.column = str(path), row, column
        self.expected, self.got = expected, got
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        parts = [message] if message else []
        if expected is not None:
            parts.append(f"expected {expected}")
        if got is not None:
            shown = repr(got)
            parts.append(f"got {shown[:80] + '...' if len(shown) > 80 else shown}")
        super().__init__(f"{where}: " + "; ".join(parts))


class ModelNotFound(KitError):
    """A model path that does not exist or holds no model; the message lists what is available."""

    def __init__(self, given: str, available: list[str]):
        self.given, self.available = given, available
        listing = ", ".join(available) if available else "none found"
        super().__init__(f"model '{given}' not found (never fetched from a hub). Available: {listing}")
