"""`mpctl`, the operators' command line.

Each sub-command lives in its own module `passerelle/cli/cmd_<name>.py` exposing a click
object named `command`; the group finds them lazily so that `mpctl decode` never imports
PostgreSQL or HSM code, and so that new commands need no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

import passerelle.cli as cli_package

_PREFIX = "cmd_"


def _command_modules() -> dict[str, str]:
    """Map a command name (`db`, `decode`, ...) to the module that defines it."""
    return {
        info.name[len(_PREFIX) :].replace("_", "-"): f"{cli_package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(cli_package.__path__)
        if info.name.startswith(_PREFIX)
    }


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_command_modules())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = _command_modules().get(cmd_name)
        if module_name is None:
            return None
        return importlib.import_module(module_name).command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="passerelle")
def cli() -> None:
    """Operate the passerelle payment gateway.

    \b
    Examples:
      mpctl demo                      switchd + simulated terminals on an embedded database
      mpctl remises --from 2026-11-01 --to 2026-11-21 --contract 1234567
      mpctl ticket payment 42         reprint a payment ticket as the terminal printed it
      mpctl decode 0100703c...        decode a captured CB2A message
      mpctl COMMAND --help            every option of one command

    \b
    Shell completion (bash; zsh_source and fish_source work the same way):
      eval "$(_MPCTL_COMPLETE=bash_source mpctl)"
    """


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
