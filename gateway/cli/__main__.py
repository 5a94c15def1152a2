"""`python -m gateway.cli`: the same as the `aistudio-fleet` command."""

from gateway.cli.commands import run

run()
