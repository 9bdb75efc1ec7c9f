"""What every command shares: one parser definition for both ways of running it, and one error policy.

A command runs as ``cnclip NAME ...`` (the dispatcher in ``cnclip_scale.cli``) and as its own script
(``launch/pretrain.py``, ``tools/to_shards.py``, ``cnclip-to-shards``): both build their parser from the same
``add_arguments`` and run through ``Command.execute``, so options, ``--help`` and exit codes cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from cnclip_scale.errors import UserError, report


@dataclass(frozen=True, kw_only=True)
class Command:
    name: str  # the `cnclip` subcommand
    error_prefix: str  # what its error lines start with: the script's old name, which users' scripts match
    description: str  # the --help text: usage examples, the first paragraph doubling as the summary
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # parsed arguments -> typed config -> the package function

    @property
    def summary(self) -> str:
        return " ".join(self.description.strip().split("\n\n")[0].split())

    def parser_options(self) -> dict:
        """``ArgumentParser`` keywords shared by the standalone parser and the ``cnclip`` subparser."""
        return {"description": self.description, "formatter_class": argparse.RawDescriptionHelpFormatter}

    def main(self, argv: list[str] | None = None) -> int:
        """The command as its own program; the program name in ``usage:`` is whatever the user ran."""
        parser = argparse.ArgumentParser(**self.parser_options())
        self.add_arguments(parser)
        return self.execute(parser.parse_args(argv))

    def execute(self, args: argparse.Namespace) -> int:
        """The one error policy: an error the user can fix from its message is one line from rank 0 and exit code 2
        on every rank (``errors.report``); anything else is a bug and keeps its traceback."""
        try:
            return self.run(args)
        except UserError as err:
            return report(self.error_prefix, err)
