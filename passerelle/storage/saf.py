"""Store-and-forward of advices and reversals in the PostgreSQL `saf` table.

Why PostgreSQL and not memory: an advice or reversal must survive a switchd restart and
be delivered by whichever node is up. The rules:

* `enqueue` is idempotent: (acquirer, message_key) is unique, a second insert is a no-op,
  so a reversal queued twice for one timed-out request is sent once.
* Delivery is in order per acquirer: one node at a time delivers an acquirer's queue (a
  session advisory lock), oldest first; an item that fails backs off exponentially and
  holds back the ones behind it, so nothing overtakes.
* Each item is claimed with `FOR UPDATE SKIP LOCKED`, sent, and marked delivered in its own
  transaction: once the acquirer acknowledged it and the commit is done, no node sends it
  again. (An ack whose commit is lost is resent with the same key; hosts dedupe by key.)
* The message holds a PAN, so it is stored encrypted (`Sealer`, an HSM data key or AES-GCM).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg_pool import AsyncConnectionPool

from passerelle.storage.db import StorageError, translate_errors

KINDS = ("advice", "reversal")


class Sealer(Protocol):
    """Encrypts queued messages; `seal` returns (blob, key version)."""

    async def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, int]: ...

    async def open(self, blob: bytes, aad: bytes) -> bytes: ...


class AesGcmSealer:
    """AES-256-GCM under one configured key: nonce(12) | ciphertext | tag."""

    def __init__(self, key: bytes, version: int = 1) -> None:
        if len(key) != 32:
            raise StorageError(f"the SAF data key must be 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.version = version

    async def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, int]:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad), self.version

    async def open(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad)


class HsmSealer:
    """An HSM data key (`hsm.encrypt_data`): its blob starts with the 2-byte key version."""

    def __init__(self, hsm: object, key: str) -> None:
        self.hsm = hsm
        self.key = key

    async def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, int]:
        blob = await self.hsm.encrypt_data(self.key, plaintext, aad)  # type: ignore[attr-defined]
        return blob, int.from_bytes(blob[:2], "big")

    async def open(self, blob: bytes, aad: bytes) -> bytes:
        return await self.hsm.decrypt_data(self.key, blob, aad)  # type: ignore[attr-defined, no-any-return]


class SafItem(msgspec.Struct, frozen=True):
    id: int
    acquirer: str
    kind: str
    message_key: str
    payload: bytes
    attempts: int


Send = Callable[[SafItem], Awaitable[None]]


def _aad(acquirer: str, kind: str, key: str) -> bytes:
    return f"saf|{acquirer}|{kind}|{key}".encode()


class SafStore:
    def __init__(self, pool: AsyncConnectionPool, sealer: Sealer) -> None:
        self.pool = pool
        self.sealer = sealer

    async def enqueue(self, acquirer: str, kind: str, message_key: str, payload: bytes) -> bool:
        """Queue one message; False when this (acquirer, key) was already queued."""
        if kind not in KINDS:
            raise StorageError(f"SAF kind must be one of {KINDS}, got {kind!r}")
        blob, version = await self.sealer.seal(payload, _aad(acquirer, kind, message_key))
        with translate_errors("queueing a SAF message"):
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    "INSERT INTO saf (acquirer, kind, message_key, payload_encrypted,"
                    " data_key_version) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (acquirer, message_key) DO NOTHING",
                    (acquirer, kind, message_key, blob, version))
                return cursor.rowcount == 1

    async def depth(self) -> dict[str, int]:
        """Undelivered messages by acquirer."""
        with translate_errors("counting SAF messages"):
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT acquirer, count(*) FROM saf WHERE delivered_at IS NULL"
                    " GROUP BY acquirer")
                return {name: count for name, count in await cursor.fetchall()}

    async def deliver(self, acquirer: str, send: Send, *, limit: int = 50,
                      backoff_min: float = 1.0, backoff_max: float = 300.0) -> int:
        """Send up to `limit` due messages of `acquirer`, in order; returns how many went.

        `send` raises to refuse one (the acquirer is down, or said no): that message backs
        off and this round stops, so the messages behind it keep their place. A message
        that cannot be decrypted (wrong data key) backs off the same way, with `last_error`
        saying so, for an operator to look at: skipping it would break the order.
        """
        delivered = 0
        with translate_errors("delivering SAF messages"):
            async with self.pool.connection() as conn:
                await conn.set_autocommit(True)
                lock = await conn.execute(
                    "SELECT pg_try_advisory_lock(hashtext('passerelle.saf'), hashtext(%s))",
                    (acquirer,))
                row = await lock.fetchone()
                if not row or not row[0]:
                    return 0  # another node is delivering this acquirer's queue
                try:
                    while delivered < limit:
                        async with conn.transaction():
                            cursor = await conn.execute(
                                "SELECT id, kind, message_key, payload_encrypted, attempts,"
                                " next_attempt_at <= now() FROM saf"
                                " WHERE acquirer = %s AND delivered_at IS NULL"
                                " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", (acquirer,))
                            head = await cursor.fetchone()
                            if head is None or not head[5]:
                                break  # empty, or the oldest is backing off
                            ident, kind, key, blob, attempts, _ = head
                            try:
                                payload = await self.sealer.open(bytes(blob),
                                                                 _aad(acquirer, kind, key))
                                await send(SafItem(ident, acquirer, kind, key, payload,
                                                   attempts))
                            except Exception as error:
                                wait = min(backoff_min * 2 ** attempts, backoff_max)
                                await conn.execute(
                                    "UPDATE saf SET attempts = attempts + 1, last_error = %s,"
                                    " next_attempt_at = now() + make_interval(secs => %s)"
                                    " WHERE id = %s",
                                    ((str(error) or type(error).__name__)[:500], wait, ident))
                                break
                            await conn.execute(
                                "UPDATE saf SET delivered_at = now(), attempts = attempts + 1"
                                " WHERE id = %s", (ident,))
                        delivered += 1
                finally:
                    await conn.execute(
                        "SELECT pg_advisory_unlock(hashtext('passerelle.saf'), hashtext(%s))",
                        (acquirer,))
        return delivered
