"""`mpctl simulate`: dial a running switchd like a terminal and run echo dialogues.

    mpctl simulate cbcom 127.0.0.1:4000 --count 3
    mpctl simulate xot 127.0.0.1:1998 --packet-size 128 --window 2
    mpctl simulate cbcom-tls switchd.example:4443 --ca ca.pem --cert tpe.pem --key tpe.key

A quick check that a listener answers end to end (TCP, TLS, X.25 call, CBCOM session, CB2A),
for operators and for the demo. Exit 0 when every echo is answered 39=00, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import click
import msgspec

from passerelle.codecs.iso8583 import CodecError, Message
from passerelle.codecs.profiles import get_profile
from passerelle.sim.terminal import SessionEnded, Terminal, echo_request


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def _run(kind: str, host: str, port: int, count: int, options: dict[str, Any]
               ) -> list[dict[str, Any]]:
    if kind == "xot":
        tpe = await Terminal.dial_xot(host, port, packet_size=options["packet_size"],
                                      window=options["window"])
    else:
        tpe = await Terminal.dial_cbcom(host, port, tls=options["tls"])
    results = []
    async with tpe:
        for stan in range(1, count + 1):
            started = time.perf_counter()
            answer = await tpe.exchange(echo_request(stan, options["terminal"]))
            elapsed_ms = (time.perf_counter() - started) * 1000
            try:
                message = Message.parse(answer, get_profile("cb2a"))
                mti, code = message.mti, message.get(39)
            except CodecError as error:
                mti, code = "?", f"undecodable ({error})"
            results.append({"stan": stan, "mti": mti, "response_code": code,
                            "ms": round(elapsed_ms, 2)})
    return results


@click.command()
@click.argument("kind", type=click.Choice(["xot", "cbcom", "cbcom-tls"]))
@click.argument("address")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 100_000),
              help="Echo dialogues to run on the session.")
@click.option("--terminal", default="SIMTPE01", show_default=True,
              help="Terminal id (field 41) of the requests.")
@click.option("--packet-size", type=click.Choice(["16", "32", "64", "128", "256", "512",
                                                  "1024"]), help="xot: facility 0x42.")
@click.option("--window", type=click.IntRange(1, 7), help="xot: facility 0x43.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="cbcom-tls: CA bundle to verify switchd (default: the system's).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="cbcom-tls: terminal certificate (mutual TLS).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="cbcom-tls: key of --cert.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dialogue.")
def command(kind: str, address: str, *, count: int, terminal: str, packet_size: str | None,
            window: int | None, ca: Path | None, cert: Path | None, key: Path | None,
            as_json: bool) -> None:
    """Dial switchd at ADDRESS (HOST:PORT) over KIND and run echo dialogues (0800 -> 0810)."""
    host, port = _address(address)
    tls = None
    if kind == "cbcom-tls":
        tls = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None:
            tls.load_cert_chain(cert, key)
    options = {"tls": tls, "terminal": terminal[:8].ljust(8),
               "packet_size": int(packet_size) if packet_size else None, "window": window}
    try:
        results = asyncio.run(_run(kind, host, port, count, options))
    except (OSError, SessionEnded, TimeoutError, ssl.SSLError) as error:
        click.echo(f"error: {kind} {address}: {error}", err=True)
        raise click.exceptions.Exit(1) from None
    for result in results:
        if as_json:
            click.echo(msgspec.json.encode(result))
        else:
            click.echo(f"STAN {result['stan']:06d}  {result['mti']}  39={result['response_code']}"
                       f"  {result['ms']} ms")
    if any(result["response_code"] != "00" for result in results):
        raise click.exceptions.Exit(1)
