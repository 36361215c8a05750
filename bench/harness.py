"""Shared pieces of the benchmarks: timing, machine description, results files, BENCHMARKS.md.

Every benchmark compares two things measured in the same run (a peer, a bare step, a limit), so
the helpers here are about measuring fairly: warm-up steps that are not timed, several repetitions
alternating between the contenders, and medians rather than means (a shared 2-core machine has
noisy neighbours; one slow repetition must not decide the result).

Results go to ``bench/results/<name>.json`` (machine readable) and, with ``--record``, into the
benchmark's own section of BENCHMARKS.md between ``<!-- bench:NAME -->`` markers, so several
benchmarks (and their owners) can update the file without touching each other's sections.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"


def time_steps(step: Callable[[], object], steps: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``step`` for ``steps`` timed calls after ``warmup`` untimed ones.

    ``step`` must end with everything finished (on CUDA it should synchronize), since the clock
    is read right after it returns.
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description(device: torch.device | None = None) -> str:
    """One line: the device, the thread count and the software versions that matter."""
    if device is not None and device.type == "cuda":
        hw = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hw = f"{os.cpu_count()}-core {cpu_name()} CPU, {torch.get_num_threads()} torch threads"
    text = f"{hw}, torch {torch.__version__}, Python {platform.python_version()}"
    load = load_average()
    # The benchmark machines are shared: say how busy this one was when the numbers were taken.
    return text if load is None else f"{text}; 1-minute load average {load:.1f} at the end"


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def today() -> str:
    return datetime.date.today().isoformat()


def fmt_int(value: float) -> str:
    """Thousands-separated integer, or 'n/a' for a missing value."""
    return "n/a" if value is None or value != value else f"{value:,.0f}"


def write_result(name: str, data: dict) -> Path:
    """Save a benchmark's numbers as bench/results/NAME.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_benchmarks_md(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` and
    ``<!-- /bench:NAME -->`` in BENCHMARKS.md, leaving everything else exactly as it was."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
