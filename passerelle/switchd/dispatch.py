"""Hands each CB2A / ISO 8583 message of a terminal session to its dialogue, by MTI.

The registry is what later issues extend: authorization registers 0100/0200/0400/0420,
télécollecte registers its 03xx/02xx/05xx/08xx messages for sessions in transfer mode.
Until a dialogue exists, these rules apply (our choices, since CB2A is not public):

* Network-management echo. CB2A numbers its messages as ISO 8583:1987 (version digit 0)
  but uses ISO 8583:1993 function codes in field 24 on the 0804 family:
  - 0800 -> 0810, 39=00: the 1987 echo (field 70 = 301 is echoed back with the rest);
  - 0804 -> 0814, 39=00 when field 24 is absent or 831 (the 1993 "echo test" function);
    any other function code (862 sign-on, 851 turn, 860 close: télécollecte) gets 39=12
    until the télécollecte dialogue registers 0804 for transfer mode.
  The same applies to 1800/1804 on the `iso93-binary` profile.
* A request, advice or notification (MTI function digit 0, 2, 4, 6 or 8, or a repeat) with
  no dialogue gets its response MTI (0100 -> 0110, 0421 -> 0430) with 39=12 "transaction
  invalide": the message is well formed, we do not serve it. No field 44: nothing is wrong
  with a field.
* A message that cannot be decoded gets its response MTI with 39=30 "erreur de format" and
  field 44 tag AA naming the field: 3-digit field number + 2-digit sub-element, "00" when
  the error is in the field as a whole (the 0110-stripe vector reads AA=04701). The answer
  echoes only the fields read before the error.
* A response MTI (xx1x, xx3x) we never asked for, or an MTI too broken to answer, cannot get
  an answer without risking a loop: it is logged, counted and dropped.

A dialogue handler is `handler(message, context)` returning the answer bytes, None (no
answer), an awaitable of either, or a `Later` it settles from a callback; the session
serialises messages, so a dialogue sees a terminal's messages in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from passerelle.codecs.iso8583 import CodecError, Message
from passerelle.codecs.profiles import get_profile
from passerelle.switchd.metrics import Metrics

_parse = Message.parse  # the per-message path: a global, not a class attribute lookup

Answer = bytes | None
# A handler may also return (answer, result): `result` (the response code it chose) labels
# the messages metric without parsing the answer again.
Labelled = tuple[bytes | None, str]

# Never echoed in a generated reject: sensitive (track data, PIN block) or request-only.
_NOT_ECHOED = (35, 36, 45, 52, 55)


class SessionContext:
    """What a dialogue knows about the terminal session that carried its message.

    `mode` is "transactional" or "transfer" (CBCOM protocol type) or None (iso listener).
    A multi-message dialogue (télécollecte) keeps its state in `state` and sets `busy`
    while the terminal owes it more messages, so that a drain waits for it.
    A dialogue ends the session with a CBCOM abort code by calling :meth:`abort`.
    """

    __slots__ = ("abort_code", "busy", "debug", "listener", "log", "mode", "peer", "profile",
                 "state", "tls_client")

    def __init__(self, listener: str, peer: str, profile: Any, log: Any,
                 tls_client: str | None = None) -> None:
        self.listener = listener
        self.peer = peer
        self.profile = profile
        self.log = log
        # Whether `log` emits debug events: the dispatcher skips building them otherwise.
        enabled = getattr(log, "is_enabled_for", None)
        self.debug = True if enabled is None else bool(enabled(logging.DEBUG))
        # Mutual TLS: the common name of the terminal's verified certificate.
        self.tls_client = tls_client
        self.mode: str | None = None
        self.state: dict[str, Any] = {}
        self.busy = False
        self.abort_code: int | None = None

    def abort(self, code: int) -> None:
        """End the session with CBCOM abort `code` (PI01 of the AB), once the answer to the
        current message, if any, has been sent. An X.25 call is cleared after the AB; the
        iso listener, with no session layer, just closes the connection. Messages already
        received and not yet handed to a dialogue are dropped."""
        if not 0 <= code <= 0xFF:
            raise ValueError(f"CBCOM abort code {code} is not one byte")
        if self.abort_code is None:
            self.abort_code = code
        self.busy = False


class Later:
    """An answer a dialogue gives later from a callback, not from a task.

    The authorization's usual path is one acquirer round trip: a task, its coroutines and a
    future to wake it cost more than the rest of that dialogue's glue. Its handler returns
    a `Later` at once and calls `give(answer)` (bytes, None, or (bytes, result)) or
    `fail(error)` exactly once; the dispatcher then counts it and turns a `CodecError` into
    the format-error answer, as for an awaitable, and the session sends the answer
    (`then(answer, failed)`, set by the session).
    """

    __slots__ = ("_dispatcher", "_message", "_settled", "context", "then")

    def __init__(self) -> None:
        self.then: Callable[[Answer, bool], None] | None = None
        self.context: SessionContext | None = None
        self._dispatcher: Dispatcher | None = None
        self._message: Message | None = None
        self._settled: tuple[Answer, bool] | None = None

    def _bind(self, dispatcher: Dispatcher, message: Message, context: SessionContext) -> None:
        self._dispatcher, self._message, self.context = dispatcher, message, context

    def listen(self, then: Callable[[Answer, bool], None]) -> None:
        """The session's callback; called at once if the answer is already there."""
        settled, self._settled = self._settled, None
        if settled is not None:
            then(*settled)
        else:
            self.then = then

    def give(self, answer: Answer | Labelled) -> None:
        dispatcher, context = self._dispatcher, self.context
        assert dispatcher is not None and context is not None and self._message is not None
        self._done(dispatcher._count(self._message.mti, answer, context), False)

    def fail(self, error: BaseException) -> None:
        dispatcher, context, message = self._dispatcher, self.context, self._message
        assert dispatcher is not None and context is not None
        if isinstance(error, CodecError):
            self._done(dispatcher._format_error(error, context, message), False)
            return
        if isinstance(error, asyncio.CancelledError):
            context.log.warning("dialogue.cancelled")
        else:
            dispatcher.metrics.error("dialogue", "internal")
            context.log.error("dialogue.failed", exc_info=error)
        self._done(None, True)

    def _done(self, answer: Answer, failed: bool) -> None:
        then, self.then = self.then, None
        if then is None:
            self._settled = (answer, failed)
        else:
            then(answer, failed)


Handler = Callable[[Message, SessionContext],
                   Answer | Labelled | Awaitable[Answer] | Awaitable[Labelled] | Later]


@functools.lru_cache(maxsize=512)
def response_mti(mti: str) -> str | None:
    """The response MTI of a request/advice/notification MTI; None for anything else.

    The class digit goes up by one (0100 -> 0110), the origin digit is kept but a repeat
    is answered as the original (0401 -> 0410, 0805 -> 0814).
    """
    if len(mti) != 4 or not mti.isdigit() or mti[2] not in "02468" or mti[3] not in "012345":
        return None
    return f"{mti[:2]}{int(mti[2]) + 1}{int(mti[3]) & ~1}"


def field_in_error(error: CodecError) -> str:
    """Field 44 tag AA value naming the field of `error` (see the module docstring)."""
    return f"{error.field or 0:03d}00"


class Registry:
    """MTI (and optionally session mode) -> dialogue handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, dict[str | None, Handler]] = {}
        # (mti, mode) -> handler: registered MTIs only, so its size is bounded
        self._resolved: dict[tuple[str, str | None], Handler] = {}

    def register(self, mtis: Iterable[str], handler: Handler, *, mode: str | None = None) -> None:
        """Route `mtis` to `handler`; with `mode`, only for sessions in that mode."""
        for mti in mtis:
            self._handlers.setdefault(mti, {})[mode] = handler
        self._resolved.clear()

    def lookup(self, mti: str, mode: str | None) -> Handler | None:
        handler = self._resolved.get((mti, mode))
        if handler is not None:
            return handler
        by_mode = self._handlers.get(mti)
        if by_mode is None:
            return None
        handler = by_mode.get(mode) or by_mode.get(None)
        if handler is not None:
            self._resolved[mti, mode] = handler
        return handler


_ECHO_ANSWERS = {"0800": "0810", "0804": "0814", "1800": "1810", "1804": "1814"}
_APPROVED = {39: "00"}  # read-only: `respond` does not keep nor change its `changes`


def _labelled_echo(message: Message, context: SessionContext) -> Labelled:
    """`echo`, telling the dispatcher its response code (no second parse for the metric).
    Registered as the echo handler itself: one call per echo, not two."""
    mti = message.mti
    answer = _ECHO_ANSWERS.get(mti) or response_mti(mti)
    assert answer is not None
    if mti[3] == "4" and mti[2] == "0" and 24 in message and message.get(24) != "831":
        return message.respond(answer, {39: "12"}), "12"
    return message.respond(answer, _APPROVED), "00"


def echo(message: Message, context: SessionContext) -> Answer:
    """Network-management echo: 0800 -> 0810 and 0804 (24 = 831) -> 0814, with 39=00."""
    return _labelled_echo(message, context)[0]


def default_registry() -> Registry:
    """The registry switchd starts with: only the echo dialogue."""
    registry = Registry()
    registry.register(("0800", "0804", "1800", "1804"), _labelled_echo)
    return registry


class Dispatcher:
    """Parses a message, finds its dialogue, and turns every failure into the right answer."""

    # Past this many (mti, result) pairs, counts go through Metrics.message_cell each time
    # (garbage MTIs must not grow the cache without bound).
    _MAX_CACHED_CELLS = 1024

    def __init__(self, registry: Registry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self._lookup = registry.lookup  # bound once: the per-message path
        # The registry's (mti, mode) -> handler cache, read directly on the per-message path
        # (the same dict: `register` clears it in place).
        self._resolved = registry._resolved
        self._cells: dict[tuple[str, str], list[int]] = {}  # (mti, result) -> metric cell

    def profile(self, name: str) -> Any:
        return get_profile(name)

    def handle(self, payload: bytes, context: SessionContext
               ) -> Answer | Awaitable[Answer] | Later:
        """The answer to `payload` (bytes or None), or an awaitable of it or a `Later` for
        slow dialogues."""
        try:
            message = _parse(payload, context.profile)
        except CodecError as error:
            return self._format_error(error, context)
        mti = message.mti
        handler = self._resolved.get((mti, context.mode))
        if handler is None:
            handler = self._lookup(mti, context.mode)
            if handler is None:
                return self._unsupported(message, context)
        try:
            answer = handler(message, context)
        except CodecError as error:
            return self._format_error(error, context, message)
        # _count, inlined for the usual forms
        kind = answer.__class__
        result: str
        if kind is tuple:
            answer, result = answer  # type: ignore[misc,assignment]
        elif kind is bytes:
            result = "answered"
        elif answer is None:
            result = "no_answer"
        elif kind is Later:  # settled from a callback: counted then
            answer._bind(self, message, context)  # type: ignore[union-attr]
            return answer  # type: ignore[return-value]
        elif hasattr(answer, "__await__"):  # a coroutine, task, future: a slow dialogue
            return self._await(answer, message, context)  # type: ignore[arg-type]
        else:
            return self._count(mti, answer, context)  # type: ignore[arg-type]
        cell = self._cells.get((mti, result))
        if cell is None:
            cell = self._cell(mti, result)
        cell[0] += 1
        if context.debug:
            context.log.debug("cb2a.dialogue", mti=mti, result=result)
        return answer  # type: ignore[return-value]

    def _cell(self, mti: str, result: str) -> list[int]:
        cell = self.metrics.message_cell(mti, result)
        if len(self._cells) < self._MAX_CACHED_CELLS:
            self._cells[mti, result] = cell
        return cell

    async def _await(self, answer: Awaitable[Answer | Labelled], message: Message,
                     context: SessionContext) -> Answer:
        try:
            result = await answer
        except CodecError as error:
            return self._format_error(error, context, message)
        return self._count(message.mti, result, context)

    def _count(self, mti: str, answer: Answer | Labelled, context: SessionContext) -> Answer:
        if type(answer) is tuple:
            answer, result = answer
        else:
            result = "no_answer" if answer is None else "answered"
        cell = self._cells.get((mti, result))
        if cell is None:
            cell = self._cell(mti, result)
        cell[0] += 1
        if context.debug:
            context.log.debug("cb2a.dialogue", mti=mti, result=result)
        return answer  # type: ignore[return-value]

    def _unsupported(self, message: Message, context: SessionContext) -> Answer:
        mti = message.mti
        answer_mti = response_mti(mti)
        if answer_mti is None:
            self.metrics.message(mti, "dropped")
            context.log.warning("cb2a.dropped", mti=mti, reason="not a request we can answer")
            return None
        self.metrics.message(mti, "12")
        context.log.info("cb2a.unsupported", mti=mti, answer=answer_mti)
        try:
            return message.respond(answer_mti, {39: "12", **dict.fromkeys(_NOT_ECHOED)})
        except CodecError as error:
            return self._format_error(error, context, message)

    def _format_error(self, error: CodecError, context: SessionContext,
                      message: Message | None = None) -> Answer:
        """39=30 + 44 AA naming the field, built from what could be read of the request."""
        self.metrics.error("cb2a", "format")
        source = error.partial if error.partial is not None else message
        mti: str | None = None
        if source is not None:
            try:
                mti = source.mti
            except CodecError:
                source = None
        answer_mti = response_mti(mti) if mti else None
        context.log.warning("cb2a.format_error", mti=mti, field=error.field,
                            offset=error.offset, reason=error.reason)
        if source is None or mti is None or answer_mti is None:
            self.metrics.message(mti or "unreadable", "dropped")
            return None
        self.metrics.message(mti, "30")
        changes: dict[int, Any] = {39: "30", 44: (("AA", field_in_error(error)),)}
        if error.field is not None:
            changes[error.field] = None
        changes.update(dict.fromkeys(f for f in _NOT_ECHOED if f != 44))
        try:
            return source.respond(answer_mti, changes)
        except CodecError as second:
            context.log.warning("cb2a.unanswerable", mti=mti, field=second.field,
                                reason=second.reason)
            return None
