"""One module per `lmstream` subcommand; each defines ``register(subparsers)``.

A module adds its parser with ``subparsers.add_parser(...)`` and sets ``func`` (a function taking
the parsed ``argparse.Namespace`` and returning an exit code) with ``set_defaults``.
"""


def add_no_verify(parser) -> None:
    """``--no-verify`` of the commands that read a checkpoint (eval, generate, export,
    consolidate): they check every file's sha256 against its manifest unless told not to."""
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the sha256 check of the checkpoint's files (it reads them all once: "
        "minutes for a very large checkpoint); sizes are still checked",
    )


def verify_notice(args) -> None:
    """Say on stderr that the check was skipped, so a damaged checkpoint is not a surprise."""
    import sys

    if not args.verify:
        print("# --no-verify: the checkpoint's sha256 checks are skipped", file=sys.stderr)
