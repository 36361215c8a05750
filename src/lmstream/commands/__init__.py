"""One module per `lmstream` subcommand; each defines ``register(subparsers)``.

A module adds its parser with ``subparsers.add_parser(...)`` and sets ``func`` (a function taking
the parsed ``argparse.Namespace`` and returning an exit code) with ``set_defaults``.
"""
