"""The `lumbar-fast` command line: a click group whose commands load lazily from `lumbar_fast.commands`.

Lazy loading keeps `lumbar-fast --help` fast (no torch import) and lets each stage own its command module.
"""

from __future__ import annotations

import importlib
import sys

import click

from lumbar_fast import __version__
from lumbar_fast.errors import LumbarFastError, first_line, typed_line

#: command name -> module in lumbar_fast.commands that defines a click command called `command`
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "ingest": "ingest",
    "info": "info",
    "show": "show",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "score": "score",
    "train-locator": "train_locator",
    "locate": "locate",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command runs or shows help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._module_exists(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not self._module_exists(cmd_name):
            return None
        module = importlib.import_module(f"lumbar_fast.commands.{COMMANDS[cmd_name]}")
        return module.command

    @staticmethod
    def _module_exists(cmd_name: str) -> bool:
        return importlib.util.find_spec(f"lumbar_fast.commands.{COMMANDS[cmd_name]}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lumbar-fast")
def cli() -> None:
    """RSNA 2024 lumbar spine MRI: synth data, ingest DICOM to a cache, train, evaluate, predict."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="lumbar-fast", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `lumbar-fast` alone: its help, as `--help` gives it
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:  # a wrong option or value: one line, with where to look
        where = exc.ctx.command_path if exc.ctx else "lumbar-fast"
        click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except LumbarFastError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # the machine said no (disk full, a path that cannot be made), here or in a worker
        click.echo(f"error: {first_line(exc)}", err=True)
        sys.exit(2)
    except MemoryError as exc:
        click.echo(f"error: out of memory ({typed_line(exc)})", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
