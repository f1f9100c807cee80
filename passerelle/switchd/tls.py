"""TLS for the cbcom-tls listener: server contexts and a sans-I/O TLS layer.

TLS runs over memory BIOs rather than asyncio's transport so that a PROXY protocol v2 header
(sent in clear by HAProxy before the ClientHello) can be read first, and so that a SIGHUP
can swap the listener's context for new connections while live ones keep theirs.
"""

from __future__ import annotations

import ssl

from passerelle.config import CbcomTlsListener

# TLS 1.2 suites: forward secret AEAD only. TLS 1.3 suites are all modern (OpenSSL defaults).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


class TLSError(Exception):
    """The TLS layer failed (handshake refused, bad record): the connection is closed."""


def server_context(settings: CbcomTlsListener) -> ssl.SSLContext:
    """A fresh server context from the files named in `settings` (raises ssl/OSError)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    assert settings.cert is not None and settings.key is not None  # config checked it
    context.load_cert_chain(settings.cert, settings.key)
    if settings.client_ca:
        context.load_verify_locations(cafile=settings.client_ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
        )
    return context


class TLSLayer:
    """TLS server side over memory BIOs: feed ciphertext, get plaintext and bytes to send."""

    __slots__ = ("_incoming", "_obj", "_outgoing", "handshake_done")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed bytes from the socket; return (plaintext for the stack, bytes to send)."""
        self._incoming.write(data)
        plain = bytearray()
        try:
            if not self.handshake_done:
                try:
                    self._obj.do_handshake()
                except ssl.SSLWantReadError:
                    return b"", self._outgoing.read()
                self.handshake_done = True
            while True:
                try:
                    chunk = self._obj.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):  # more to come; close_notify
                    break
                if not chunk:
                    break
                plain += chunk
        except ssl.SSLError as error:
            raise TLSError(error.reason or str(error)) from None
        return bytes(plain), self._outgoing.read()

    def send(self, plain: bytes) -> bytes:
        """Encrypt `plain`; return the records to write on the socket."""
        try:
            self._obj.write(plain)
        except ssl.SSLError as error:
            raise TLSError(error.reason or str(error)) from None
        return self._outgoing.read()

    @property
    def peer_subject(self) -> str | None:
        """The client certificate's subject CN (mutual TLS), for the logs."""
        cert = self._obj.getpeercert() if self.handshake_done else None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    @property
    def version(self) -> str | None:
        return self._obj.version()
