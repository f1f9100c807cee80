"""cbcom-tls: real TLS with certificates made here, mutual TLS, and SIGHUP reload."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from passerelle.codecs.iso8583 import Message
from passerelle.codecs.profiles import get_profile
from passerelle.codecs.proxy_v2 import build_proxy_header
from passerelle.sim.terminal import SessionEnded, Terminal, echo_request
from passerelle.switchd.process import SwitchdProcess

pytestmark = pytest.mark.integration

CB2A = get_profile("cb2a")
_NOW = datetime.datetime.now(datetime.UTC)


class Pki:
    """A CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = directory / f"{name}-ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool) -> tuple[Path, Path]:
        """(certificate path, key path) for `common_name`."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else \
            x509.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{self.name}-{common_name}.pem"
        key_path = self.directory / f"{self.name}-{common_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A terminal's context trusting this CA, presenting `cert` if given."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if cert is not None:
            context.load_cert_chain(*cert)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("pki")
    servers, terminals, strangers = (Pki(directory, n) for n in ("servers", "tpe", "other"))
    return {
        "dir": directory, "servers": servers, "terminals": terminals,
        "server_cert": servers.issue("switchd", server=True),
        "tpe_cert": terminals.issue("TPE-0001", server=False),
        "stranger_cert": strangers.issue("TPE-9999", server=False),
    }


def _settings(cert: Path, key: Path, client_ca: Path | None = None) -> dict[str, object]:
    tls: dict[str, object] = {"enabled": True, "host": "127.0.0.1", "port": 0,
                              "cert": str(cert), "key": str(key)}
    if client_ca is not None:
        tls["client_ca"] = str(client_ca)
    return {"listeners": {"cbcom-tls": tls, "xot": {"enabled": False},
                          "cbcom": {"enabled": False}, "iso": {"enabled": False}},
            "metrics": {"enabled": False}}


@pytest.fixture(scope="module")
def mutual(pki: dict[str, object], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[SwitchdProcess]:
    cert, key = pki["server_cert"]  # type: ignore[misc]
    settings = _settings(cert, key, pki["terminals"].ca_path)  # type: ignore[attr-defined]
    with SwitchdProcess(settings, tmp_path_factory.mktemp("mutual")) as process:
        yield process


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_mutual_tls_accepts_a_terminal_certificate(pki: dict[str, object],
                                                   mutual: SwitchdProcess) -> None:
    context = pki["servers"].client_context(pki["tpe_cert"])  # type: ignore[attr-defined]

    async def scenario() -> None:
        async with await Terminal.dial_cbcom("127.0.0.1", mutual.port("cbcom-tls"),
                                             tls=context, server_hostname="localhost") as tpe:
            answer = Message.parse(await tpe.exchange(echo_request(21)), CB2A)
            assert answer.mti == "0810" and answer.get(39) == "00"
    run(scenario())
    done = mutual.wait_for("tls.handshake_done", client="TPE-0001")
    assert done["tls"] in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses(pki: dict[str, object], mutual: SwitchdProcess, who: str) -> None:
    cert = None if who == "no certificate" else pki["stranger_cert"]
    context = pki["servers"].client_context(cert)  # type: ignore[attr-defined]

    async def scenario() -> None:
        with pytest.raises((SessionEnded, ssl.SSLError, ConnectionError)):
            await Terminal.dial_cbcom("127.0.0.1", mutual.port("cbcom-tls"), tls=context,
                                      server_hostname="localhost", timeout=5)
    run(scenario())
    # and switchd still serves the right terminals
    test_mutual_tls_accepts_a_terminal_certificate(pki, mutual)


def test_tls_12_still_works_and_garbage_is_refused(pki: dict[str, object],
                                                   mutual: SwitchdProcess) -> None:
    context = pki["servers"].client_context(pki["tpe_cert"])  # type: ignore[attr-defined]
    context.maximum_version = ssl.TLSVersion.TLSv1_2

    async def scenario() -> None:
        async with await Terminal.dial_cbcom("127.0.0.1", mutual.port("cbcom-tls"),
                                             tls=context, server_hostname="localhost") as tpe:
            assert Message.parse(await tpe.exchange(echo_request(22)), CB2A).get(39) == "00"
            cipher = tpe.tls_cipher
            assert cipher is not None and cipher[1] == "TLSv1.2"
            assert cipher[0].startswith("ECDHE-") and ("GCM" in cipher[0] or "CHACHA" in cipher[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", mutual.port("cbcom-tls"))
        writer.write(b"\x00\x00\x00\x05hello, not TLS")
        answer = await asyncio.wait_for(reader.read(-1), 5)  # switchd closes
        assert answer == b"" or answer[0] == 0x15  # nothing, or a TLS alert record
        writer.close()
    run(scenario())


def test_proxy_header_before_tls(pki: dict[str, object], tmp_path: Path) -> None:
    cert, key = pki["server_cert"]  # type: ignore[misc]
    settings = _settings(cert, key)
    settings["listeners"]["cbcom-tls"]["proxy_protocol"] = True  # type: ignore[index]
    with SwitchdProcess(settings, tmp_path) as process:
        async def scenario() -> None:
            header = build_proxy_header(("198.51.100.9", 52000), ("192.0.2.1", 4443))
            async with await Terminal.dial_cbcom(
                    "127.0.0.1", process.port("cbcom-tls"), proxy_header=header,
                    tls=pki["servers"].client_context(),  # type: ignore[attr-defined]
                    server_hostname="localhost") as tpe:
                assert Message.parse(await tpe.exchange(echo_request(41)), CB2A).get(39) == "00"
        run(scenario())
        process.wait_for("tls.handshake_done", timeout=5, peer="198.51.100.9:52000")


def test_silent_client_is_closed_after_the_handshake_timeout(pki: dict[str, object],
                                                             tmp_path: Path) -> None:
    cert, key = pki["server_cert"]  # type: ignore[misc]
    settings = _settings(cert, key)
    settings["switchd"] = {"handshake_timeout": 0.3}
    with SwitchdProcess(settings, tmp_path) as process:
        async def scenario() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", process.port("cbcom-tls"))
            writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
            assert await asyncio.wait_for(reader.read(-1), 5) == b""
            writer.close()
        run(scenario())
        process.wait_for("conn.handshake_timeout", timeout=5)  # the log thread may lag the close


def test_sighup_with_a_broken_certificate_keeps_the_old_one(pki: dict[str, object],
                                                            tmp_path: Path) -> None:
    cert, key = pki["server_cert"]  # type: ignore[misc]
    live_cert = tmp_path / "live.pem"
    live_cert.write_bytes(cert.read_bytes())
    with SwitchdProcess(_settings(live_cert, key), tmp_path) as process:
        live_cert.write_text("not a certificate")
        process.signal(signal.SIGHUP)
        process.wait_for("tls.reload_failed")

        async def scenario() -> None:
            async with await Terminal.dial_cbcom(
                    "127.0.0.1", process.port("cbcom-tls"),
                    tls=pki["servers"].client_context(),  # type: ignore[attr-defined]
                    server_hostname="localhost") as tpe:
                assert Message.parse(await tpe.exchange(echo_request(42)), CB2A).get(39) == "00"
        run(scenario())


def test_sighup_reloads_certificate_without_dropping_live_sessions(
        pki: dict[str, object], tmp_path: Path) -> None:
    old_ca = pki["servers"]
    new_ca = Pki(tmp_path, "renewed")
    cert, key = old_ca.issue("switchd-live", server=True)  # type: ignore[attr-defined]
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    with SwitchdProcess(_settings(live_cert, live_key), tmp_path) as process:
        port = process.port("cbcom-tls")

        async def scenario() -> None:
            live = await Terminal.dial_cbcom("127.0.0.1", port, server_hostname="localhost",
                                             tls=old_ca.client_context())  # type: ignore[attr-defined]
            assert Message.parse(await live.exchange(echo_request(31)), CB2A).get(39) == "00"
            new_cert, new_key = new_ca.issue("switchd-renewed", server=True)
            live_cert.write_bytes(new_cert.read_bytes())
            live_key.write_bytes(new_key.read_bytes())
            process.signal(signal.SIGHUP)
            await asyncio.to_thread(process.wait_for, "tls.reloaded")
            async with await Terminal.dial_cbcom("127.0.0.1", port, tls=new_ca.client_context(),
                                                 server_hostname="localhost") as fresh:
                assert Message.parse(await fresh.exchange(echo_request(32)), CB2A).get(39) == "00"
            with pytest.raises((SessionEnded, ssl.SSLError, ConnectionError)):
                await Terminal.dial_cbcom("127.0.0.1", port, tls=old_ca.client_context(),  # type: ignore[attr-defined]
                                          server_hostname="localhost", timeout=5)
            # the session opened before the reload is still there, on the old certificate
            assert Message.parse(await live.exchange(echo_request(33)), CB2A).get(11) == "000033"
            await live.close()
        run(scenario())
        assert not process.find("conn.closed", reason="internal error")
