"""Run every benchmark in bench/ and print a summary: ``python bench/run_all.py [--quick] [--record]``.

Benchmarks are the ``bench_*.py`` scripts in this folder (whoever wrote them) plus ``gpu_*.py``;
each runs in its own process, so one crashing does not stop the others and each starts with a
clean memory counter. ``--quick`` is passed to the scripts that accept it (smoke-sized runs, for
checking that everything works; their numbers are not representative). ``--record`` is passed to
the scripts that accept it, so they write their sections of BENCHMARKS.md. The ``gpu_*.py``
scripts are skipped, and say so, when no CUDA device is present.

Exit status: 0 when every benchmark that ran succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Data first, then the model, then the loop and the scaling sweep, the GPU last.
PREFERRED_ORDER = [
    "bench_tokenizer",
    "bench_loader",
    "bench_train_step",
    "bench_loop_overhead",
    "bench_scaling",
    "gpu_1b",
    "gpu_loop",
]


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed (rc N) | skipped (why)
    seconds: float
    tail: list[str]


def discover(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """The benchmark scripts present, in the preferred order (unknown ones after, by name)."""
    scripts = sorted(bench_dir.glob("bench_*.py")) + sorted(bench_dir.glob("gpu_*.py"))
    rank = {name: i for i, name in enumerate(PREFERRED_ORDER)}
    return sorted(scripts, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))


def accepts(script: Path, flag: str) -> bool:
    """Whether a script declares ``flag`` (read from its source: running --help costs an import);
    a script whose parser is _common.bench_parser has its flags (--quick, --record)."""
    text = script.read_text(encoding="utf-8")
    return f'"{flag}"' in text or (flag in ("--quick", "--record") and "bench_parser(" in text)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def command_for(script: Path, quick: bool, record: bool) -> list[str]:
    cmd = [sys.executable, str(script)]
    if quick and accepts(script, "--quick"):
        cmd.append("--quick")
    if record and not quick and accepts(script, "--record"):
        cmd.append("--record")
    return cmd


def run_one(script: Path, quick: bool, record: bool) -> Outcome:
    if script.stem.startswith("gpu_") and not cuda_available():
        return Outcome(script.stem, "skipped (no CUDA device; no GPU figure measured)", 0.0, [])
    cmd = command_for(script, quick, record)
    print(f"\n=== {script.stem}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    # Output streams through so a long benchmark shows progress; the tail is kept for the summary.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    rc = proc.wait()
    seconds = time.perf_counter() - start
    tail = [line for line in lines if line.strip()][-3:]
    return Outcome(script.stem, "ok" if rc == 0 else f"failed (rc {rc})", seconds, tail)


def summary(outcomes: list[Outcome]) -> str:
    lines = ["", "=== summary", f"{'benchmark':22} {'status':50} {'seconds':>8}"]
    for o in outcomes:
        lines.append(f"{o.name:22} {o.status:50} {o.seconds:8.1f}")
        lines += [f"    {t}" for t in o.tail]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke-sized runs of every benchmark")
    p.add_argument("--record", action="store_true", help="benchmarks write BENCHMARKS.md sections")
    p.add_argument("--only", default="", help="comma-separated benchmark names to run")
    args = p.parse_args(argv)
    scripts = discover()
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = wanted - {s.stem for s in scripts}
        if unknown:
            p.error(f"--only: no benchmark named {', '.join(sorted(unknown))} in {BENCH_DIR}")
        scripts = [s for s in scripts if s.stem in wanted]
    outcomes = [run_one(s, args.quick, args.record) for s in scripts]
    print(summary(outcomes))
    return 0 if all(not o.status.startswith("failed") for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
