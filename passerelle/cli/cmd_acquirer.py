"""`mpctl acquirer`: run the acquirer host simulator (demo, tests by hand, benchmarks).

    mpctl acquirer --port 7000 --profile iso93-binary --decline-above 50000 \\
        --fault 7001=twice --fault 7002=delay --latency 0.002

Runs until Ctrl-C; prints one JSON line with its address when it is listening, and one with
its counters when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import click

from passerelle.sim.acquirer import FAULTS, AcquirerSimulator, Rules


def _faults(values: tuple[str, ...]) -> dict[int, str]:
    faults: dict[int, str] = {}
    for value in values:
        amount, _, fault = value.partition("=")
        if not amount.isdigit() or fault not in FAULTS:
            raise click.BadParameter(
                f"{value!r}: expected AMOUNT=FAULT, FAULT one of {', '.join(FAULTS)}",
                param_hint="--fault")
        faults[int(amount)] = fault
    return faults


@click.command("acquirer")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--profile", default="iso93-binary", show_default=True,
              type=click.Choice(["iso93-binary", "iso87-ascii", "cb2a"]))
@click.option("--framing", default=2, show_default=True, type=click.Choice(["2", "4"]),
              help="Bytes of the big-endian length prefix.")
@click.option("--decline-above", type=click.IntRange(0), help="Decline (51) above this "
              "amount, in minor units.")
@click.option("--decline-bin", multiple=True, help="Decline (05) cards with this prefix.")
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds before every answer.")
@click.option("--fault", "fault_specs", multiple=True, metavar="AMOUNT=FAULT",
              help=f"A fault for one exact amount ({', '.join(FAULTS)}).")
@click.option("--fault-delay", default=1.0, show_default=True, type=click.FloatRange(0, 600),
              help="Extra seconds for the delay fault.")
def command(*, host: str, port: int, profile: str, framing: str, decline_above: int | None,
            decline_bin: tuple[str, ...], latency: float, fault_specs: tuple[str, ...],
            fault_delay: float) -> None:
    """Run an acquirer host simulator on a real socket."""
    rules = Rules(decline_above=decline_above, decline_bins=decline_bin, latency=latency,
                  faults=_faults(fault_specs), fault_delay=fault_delay)
    asyncio.run(_serve(AcquirerSimulator(profile, int(framing), rules, host, port)))


async def _serve(sim: AcquirerSimulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await sim.start()
    except OSError as error:
        raise click.ClickException(f"cannot listen on {sim.host}:{sim.port}: "
                                   f"{error.strerror}") from None
    click.echo(json.dumps({"listening": f"{sim.host}:{port}", "profile": sim.profile.name,
                           "framing": sim.framing}), nl=True)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await sim.stop()
    click.echo(json.dumps({"requests": dict(sim.requests), "approved": sim.approved,
                           "advices": sim.received["advice"].total(),
                           "reversals": sim.received["reversal"].total()}))
