"""How well the training loader shuffles, side by side with ``datasets``' streaming shuffle.

One corpus, one window: ``--docs`` short documents carrying their source position as an id
(``doc-000123 ...``), in ``--files`` parquet files, read for two epochs by

* ``lmstream``: ``build_train_loader`` (files mode, ``--workers`` DataLoader workers,
  ``shuffle_buffer_size = --window``), its batches decoded back to document ids (its shuffle:
  ``lmstream.data.interleave`` and ``shuffle``);
* ``datasets``: ``load_dataset("parquet", streaming=True).shuffle(seed, buffer_size=--window)``
  (shard order drawn per epoch with ``set_epoch``, 10 shards interleaved, then a buffer of
  ``--window`` documents),
  cut into batches of as many documents as lmstream's batches hold on average;
* ``global``: a uniform random permutation per epoch (what a perfect shuffle gives).

Figures: the correlation between the mean source position of consecutive batches (0 for a
global shuffle, near 1 when reading follows the source), and the rank (Spearman) correlation
between a document's place in epoch 0 and in epoch 1 (goal < 0.1). Issue #20's goals: the
first no worse than ``datasets``', the second below 0.1.

What ``datasets`` does (5.x ``IterableDataset.shuffle``): it permutes the shards (here one per
file), reads up to ``max_buffer_input_shards`` (10) of them interleaved in blocks of
``buffer_size // 10`` rows, and samples from a buffer of ``buffer_size``. With 16 files both
figures then hang on which files happen to be read together (and, between epochs, in the same
half of the pass), so one seed is luck: every contender runs ``--seeds`` seeds and the table
gives the mean and the range.

Run: ``python bench/bench_shuffle.py [--record]`` (and ``--more-files`` files, 64 by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "south", "sea"]
SEEDS = (42, 1, 2, 3, 4)


def write_corpus(folder: Path, docs: int, files: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    texts = [
        f"doc-{i:06d} " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 30))))
        for i in range(docs)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, part in enumerate(np.array_split(np.array(texts, dtype=object), files)):
        path = folder / f"part-{k:03d}.parquet"
        pq.write_table(pa.table({"text": list(part)}), path, row_group_size=256)
        paths.append(str(path))
    return paths


def lmstream_batches(
    paths: list[str], work: Path, window: int, workers: int, seed: int
) -> list[list]:
    """Per epoch, the batches' document ids (each document counted in the batch it starts in)."""
    from lmstream.config import parse_training_config
    from lmstream.data.loader import build_train_loader
    from lmstream.tokenizer import train_bpe

    tok = train_bpe(["doc-000123 " + " ".join(WORDS)] * 50, 300, ["<|endoftext|>", "<|pad|>"])
    tok.save(str(work / "tokenizer.json"))
    cfg = parse_training_config(
        {
            "model": {"hidden_size": 8, "intermediate_size": 8, "num_layers": 1,
                      "num_attention_heads": 2},
            "tokenizer": {"tokenizer_json": str(work / "tokenizer.json")},
            "data": {"batch_size": 8, "sequence_length": 128, "num_workers": workers,
                     "shuffle_buffer_size": window, "validation_documents": 0,
                     "train_shards": paths},
            "optimizer": {"learning_rate": 1e-3}, "scheduler": {"total_steps": 10},
            "runtime": {"seed": seed},
        },
        work,
    )  # fmt: skip
    loader = build_train_loader(cfg, tok, work)
    eot = tok.token_to_id("<|endoftext|>")
    epochs: list[list[list[int]]] = [[], []]
    pending: dict[int, list[int]] = {}  # a worker's document tokens not yet ended
    for batch in loader:
        if batch.epoch >= 2:
            break
        rows = np.concatenate([batch.inputs.numpy(), batch.targets[:, -1:].numpy()], axis=1)
        ids, doc = [], pending.get(loader.last_worker, [])
        for t in rows.reshape(-1):
            if t == eot:
                if doc:
                    text = tok.decode(doc)
                    if text.startswith("doc-") and text[4:10].isdigit():
                        ids.append(int(text[4:10]))  # (a document started in an earlier batch
                doc = []  # is counted in the batch that ends it: a bias of < 1 batch)
            elif t >= 0:
                doc.append(int(t))
        pending[loader.last_worker] = doc
        epochs[batch.epoch].append(ids)
    return epochs


def datasets_batches(paths: list[str], window: int, per_batch: int, seed: int) -> list[list]:
    import datasets

    ds = datasets.load_dataset("parquet", data_files=paths, split="train", streaming=True)
    ds = ds.shuffle(seed=seed, buffer_size=window)
    out = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        ids = [int(r["text"][4:10]) for r in ds]
        out.append([ids[i : i + per_batch] for i in range(0, len(ids), per_batch)])
    return out


def global_batches(n: int, per_batch: int, seed: int) -> list[list]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in (0, 1):
        ids = rng.permutation(n).tolist()
        out.append([ids[i : i + per_batch] for i in range(0, n, per_batch)])
    return out


def consecutive_correlation(batches: list[list[int]]) -> float:
    means = np.array([np.mean(b) for b in batches if b])
    return float(np.corrcoef(means[:-1], means[1:])[0, 1])


def epoch_rank_correlation(epochs: list[list[list[int]]]) -> float:
    orders = [[i for b in batches for i in b] for batches in epochs]
    common = sorted(set(orders[0]) & set(orders[1]))
    ranks = [{d: r for r, d in enumerate(order)} for order in orders]
    a = np.array([ranks[0][d] for d in common], dtype=float)
    b = np.array([ranks[1][d] for d in common], dtype=float)
    return float(np.corrcoef(a, b)[0, 1])  # Pearson on ranks = Spearman


def figures(epochs: list[list[list[int]]], docs: int) -> dict:
    return {
        "consecutive": consecutive_correlation(epochs[0]),
        "epoch_rank": epoch_rank_correlation(epochs),
        "coverage": len({i for b in epochs[0] for i in b}) / docs,
    }


def measure(args) -> dict:
    names = [
        f"lmstream, {args.workers} workers, window {args.window}",
        f"datasets .shuffle(buffer_size={args.window})",
        "global permutation",
    ]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-shuffle-") as tmp:
        work = Path(tmp)
        paths = write_corpus(work / "data", args.docs, args.files)
        for seed in SEEDS[: args.seeds]:
            ours = lmstream_batches(paths, work, args.window, args.workers, seed)
            per_batch = max(1, round(args.docs / len(ours[0])))
            runs[names[0]].append(figures(ours, args.docs))
            theirs = datasets_batches(paths, args.window, per_batch, seed)
            runs[names[1]].append(figures(theirs, args.docs))
            runs[names[2]].append(figures(global_batches(args.docs, per_batch, seed), args.docs))
    rows = {}
    for name, per_seed in runs.items():
        rows[name] = {key: float(np.mean([r[key] for r in per_seed])) for key in per_seed[0]} | {
            f"{key}_range": [min(r[key] for r in per_seed), max(r[key] for r in per_seed)]
            for key in ("consecutive", "epoch_rank")
        }
        print(f"{name:48s} consecutive {rows[name]['consecutive']:+.3f}  "
              f"epoch-to-epoch rank {rows[name]['epoch_rank']:+.3f}  "
              f"(per seed: {[round(r['consecutive'], 3) for r in per_seed]} / "
              f"{[round(r['epoch_rank'], 3) for r in per_seed]})")  # fmt: skip
    return {"rows": rows, "per_batch": per_batch, "seeds": list(SEEDS[: args.seeds])}


def _cell(row: dict, key: str) -> str:
    low, high = row[f"{key}_range"]
    return f"{row[key]:+.3f} ({low:+.3f} .. {high:+.3f})"


def _table(rows: dict) -> str:
    return harness.markdown_table(
        ["contender", "consecutive-batch correlation", "epoch 0 vs 1 rank correlation"],
        [[k, _cell(v, "consecutive"), _cell(v, "epoch_rank")] for k, v in rows.items()],
    )


def _met(rows: dict) -> bool:
    ours, theirs = list(rows.values())[:2]
    return ours["consecutive"] <= theirs["consecutive"] and abs(ours["epoch_rank"]) < 0.1


EXPLAINED = (
    "What is compared. lmstream (shuffle_buffer_size N): each pass reads the files in a seeded "
    "order, 16 at a time round-robin in blocks of N/16 documents, from the second epoch each "
    "file from a seeded point (then from its start), deals that sequence round-robin to the "
    "workers, and each worker shuffles windows of N of its documents; batches alternate between "
    "the workers. datasets 5.x `shuffle(seed, buffer_size=N)`: a seeded file order, 10 files "
    "(`max_buffer_input_shards`) read round-robin in blocks of N/10 rows, and a buffer of N that "
    "is shuffled and half emitted whenever it is full; the file order changes with `set_epoch`, "
    "each file is always read from its start. With 16 files its figures hang on which files "
    "happen to be read together and in which half of the pass (see the ranges; the single "
    "seed-42 run recorded before, 0.123, was its lowest), so every contender runs on the same "
    "seeds and the means are compared. Single seeds can miss a goal the mean meets (see the "
    "ranges)."
)


def record(data: dict, args) -> None:
    body = (
        "## Shuffle quality: lmstream's loader vs datasets' streaming shuffle\n\n"
        f"`python bench/bench_shuffle.py --record` on {data['date']}, {data['machine']}.\n"
        f"Corpus: {args.docs:,} short documents in {args.files} parquet files (ids = source "
        f"positions), 2 epochs, batches of about {data['per_batch']} documents; mean (range) over "
        f"seeds {', '.join(map(str, data['seeds']))}.\n\n{_table(data['rows'])}\n\n"
        f"Goal (issue #20): consecutive-batch correlation no worse than datasets', epoch-to-epoch "
        f"rank correlation < 0.1: **{'MET' if _met(data['rows']) else 'NOT MET'}**.\n\n"
    )
    if "more_files" in data:
        more = data["more_files"]
        body += (
            f"The same corpus in {more['files']} files (more files than lmstream reads at once, "
            f"so a pass has phases as datasets' does):\n\n{_table(more['rows'])}\n\n"
            f"Goal on this layout: **{'MET' if _met(more['rows']) else 'NOT MET'}**.\n\n"
        )
    harness.update_benchmarks_md("shuffle", body + EXPLAINED + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--window", type=int, default=1000, help="shuffle window = buffer")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help=f"at most {len(SEEDS)}")
    parser.add_argument("--more-files", type=int, default=64, help="second layout (0: none)")
    parser.add_argument("--record", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    data = {"date": harness.today(), "machine": harness.machine_description(), **measure(args)}
    if args.more_files:
        more = argparse.Namespace(**{**vars(args), "files": args.more_files})
        data["more_files"] = {"files": args.more_files, **measure(more)}
    harness.write_result("shuffle", data)
    if args.record:
        record(data, args)


if __name__ == "__main__":
    main()
