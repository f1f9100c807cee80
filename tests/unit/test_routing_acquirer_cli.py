"""`mpctl acquirer`: bad input is refused with exit code 2 and says what is expected."""

from __future__ import annotations

from click.testing import CliRunner

from passerelle.cli.cmd_acquirer import command


def test_a_bad_fault_is_refused_with_usage_error() -> None:
    result = CliRunner().invoke(command, ["--fault", "1500=explode"])
    assert result.exit_code == 2
    assert "expected AMOUNT=FAULT, FAULT one of drop, delay, close, garbage, twice" in \
        result.output


def test_a_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(command, ["--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
