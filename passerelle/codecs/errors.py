"""The one exception every codec in this package raises."""

from __future__ import annotations

from typing import Any


class CodecError(ValueError):
    """A message could not be decoded or encoded.

    It names what a person (or a CB2A format-error reply) needs: the field number (None for the
    MTI/bitmap/framing), the byte offset in the message, and a plain reason. The reason never
    carries a field's value, so it is safe to log whatever the field held.

    `partial` is the `Message` of the fields read before the error (decode only), so that a
    format-error answer can still echo the request's keys (STAN, terminal, ...).
    """

    def __init__(self, field: int | None, offset: int, reason: str, partial: Any = None) -> None:
        self.field = field
        self.offset = offset
        self.reason = reason
        self.partial = partial
        where = "message" if field is None else f"field {field}"
        super().__init__(f"{where} at byte {offset}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.offset, self.reason))
