"""The frame that the model benchmarks share (bench_document_mask, bench_scaling,
bench_train_step, gpu_1b): their command line (the docstring as ``--help``, ``--quick`` and
``--record``), the head of their report (the command that made it, the machine, the date) and
where the report goes (bench/results/NAME.json, stdout, BENCHMARKS.md with ``--record``).

Measuring itself (timing, medians, the BENCHMARKS.md sections) is in harness.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness import machine_description, today, update_benchmarks_md, write_result


def bench_parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A benchmark's parser: ``doc`` (its module docstring) as the description, kept as written,
    and the flags every benchmark has (run_all.py passes them to scripts that call this);
    ``quick`` says what ``--quick`` shrinks."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--record", action="store_true", help="write the section in BENCHMARKS.md")
    return p


def parse(
    parser: argparse.ArgumentParser, argv: list[str] | None, script: str
) -> argparse.Namespace:
    """``argv`` (None: the process's own) parsed, with ``args.argv`` (the arguments as given)
    and ``args.command`` (``python bench/NAME.py ARGS``, for the report) added."""
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.command = " ".join([f"python bench/{Path(script).name}", *args.argv])
    return args


def report_head(title: str, command: str, device: torch.device | None) -> list[str]:
    """The first lines of a report: its title, how it was made, on what, and when."""
    return [
        f"## {title}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_description(device)}",
        f"- Date: {today()}",
    ]


def publish(name: str, result: dict, text: str, record: bool) -> None:
    """Save ``result`` as bench/results/NAME.json, print the report ``text`` and, with
    ``record``, write it into BENCHMARKS.md's section NAME."""
    write_result(name, result)
    print(text)
    if record:
        update_benchmarks_md(name, text)
