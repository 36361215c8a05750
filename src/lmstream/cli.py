"""The one `lmstream` command. Each subcommand lives in ``lmstream.commands.<name>``.

User-fixable problems (:class:`lmstream.errors.LmstreamError`, and the failures
:func:`lmstream.failures.translate` recognises) print one clear message and exit with the error's
code (2 for config errors) without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import select
import sys

from lmstream import __version__, collector, failures, process_exit

# Subcommand modules, in the order of the workflow (lmstream.commands.<name>).
COMMANDS = (
    "orchestrate",
    "train",
    "eval",
    "generate",
    "export",
    "consolidate",
    "plot",
    "demo",
)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples in epilogs as written and show each default once: a help line that
    words its default itself, a switch, or a default of None gets no "(default: X)" added."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmstream",
        description="Train decoder-only transformer language models on text streamed from the "
        "Hugging Face Hub or local files.",
        formatter_class=_Formatter,
        epilog="Run `lmstream COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"lmstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"lmstream.commands.{name}").register(sub, _Formatter)
    return parser


def entry() -> None:
    """The `lmstream` program (console script, `python -m lmstream`, torchrun's ranks): the
    command, then the process ends without the interpreter's finalization
    (lmstream.process_exit: a second saved, and no abort from a native thread at exit)."""
    collector.pause()  # until the command has started (lmstream.collector)
    try:
        code = main()
    except Exception:
        # A bug's traceback, then the same exit as a finished command, not the interpreter's
        # finalization: there an object still held by the traceback (the training loader's
        # generator, whose cleanup starts a thread) was torn down where no new thread runs, and
        # `lmstream train | head` hung for good after its BrokenPipeError; under torchrun a
        # native thread could turn the failure into SIGABRT. The exception is dropped before
        # the exit, so what it held is collected while threads still run.
        if isinstance(sys.exc_info()[1], BrokenPipeError) and _stdout_reader_gone():
            # `lmstream generate ... | head -1`: the reader took what it wanted. Not a bug, so
            # no traceback; 141, what the shell reports for a program that SIGPIPE ended (cat,
            # git), so that `set -o pipefail` still sees the output was not all delivered.
            # stdout goes to /dev/null: its buffered rest would fail the flush at exit (120).
            process_exit.to_devnull(sys.stdout)
            code = 141
        else:
            sys.excepthook(*sys.exc_info())
            code = 1
    process_exit.exit_without_finalizing(code)


def _stdout_reader_gone() -> bool:
    """Whether fd 1 is a pipe (or socket) whose reader has gone: poll reports POLLERR for it.
    A BrokenPipeError from elsewhere (a network connection) is then still a bug's traceback."""
    try:
        poller = select.poll()
        poller.register(1, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (callers in the same process keep running)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "ends_start_up", False):  # train says itself when its start-up ends
        collector.imports_done()
        collector.start_up_done()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"lmstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # A dead DataLoader worker's error can come from torch's SIGCHLD handler at any line,
        # even past a command's own error handling: it is translated here too.
        failure = failures.translate(err)
        if failure is None:
            raise
        for line in str(failure).splitlines() or [type(failure).__name__]:
            print(f"lmstream {args.command}: error: {line}", file=sys.stderr)
        return failure.exit_code


if __name__ == "__main__":
    entry()
