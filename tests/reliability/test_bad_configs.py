"""Malformed training configs through the real CLI (`lmstream train --config`): each is refused
with one line that names the problem, a non-zero exit, no traceback, and nothing written.

Kinds: wrong types, out-of-range values, unknown keys and values, inconsistent fields, missing
fields and files, broken YAML/JSON. (tests/unit/test_config.py checks the schema's messages at
the loader level; this checks what a user sees from the command, with a real tokenizer and data.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.reliability.support import tiny_config, tree
from tests.support.training import DELETE, apply_overrides, train_in_process


def change(**values):
    """A case that edits the tiny config (``model__hidden_size=...`` sets model.hidden_size)."""

    def apply(cfg: dict, run_dir: Path, corpus: Path) -> None:
        apply_overrides(cfg, {key.replace("__", "."): value for key, value in values.items()})
        (run_dir / "training.yaml").write_text(yaml.safe_dump(cfg))

    return apply


def text(content: str | bytes):
    """A case that writes training.yaml verbatim."""

    def apply(cfg: dict, run_dir: Path, corpus: Path) -> None:
        path = run_dir / "training.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return apply


def beside(name: str, content: str, **values):
    """A valid-looking config with a broken file ``name`` beside it or pointed to by it."""

    def apply(cfg: dict, run_dir: Path, corpus: Path) -> None:
        (run_dir / name).write_text(content)
        for key, value in values.items():
            value = str(run_dir / value) if value == name else value
            apply_overrides(cfg, {key.replace("__", "."): value})
        (run_dir / "training.yaml").write_text(yaml.safe_dump(cfg))

    return apply


# (kind, id, how to break it, words the one-line error must hold)
CASES = [
    # ---- wrong types
    ("type", "hidden_size str", change(model__hidden_size="big"), "model.hidden_size"),
    ("type", "batch_size float", change(data__batch_size=2.5), "data.batch_size"),
    ("type", "lr str", change(optimizer__learning_rate="fast"), "optimizer.learning_rate"),
    ("type", "seed str", change(runtime__seed="abc"), "runtime.seed"),
    ("type", "every_n_steps list", change(runtime__checkpoint__every_n_steps=[1]), "every_n_steps"),
    ("type", "train_shards int", change(data__train_shards=5), "data.train_shards"),
    ("type", "model section str", change(model="tiny"), "model"),
    ("type", "compile str", change(runtime__compile="maybe"), "runtime.compile"),
    ("type", "tie_embeddings str", change(model__tie_embeddings="sometimes"), "tie_embeddings"),
    ("type", "warmup float", change(scheduler__warmup_steps=1.5), "scheduler.warmup_steps"),
    # ---- out of range
    ("range", "num_layers 0", change(model__num_layers=0), "model.num_layers"),
    ("range", "sequence_length 0", change(data__sequence_length=0), "data.sequence_length"),
    ("range", "batch_size -1", change(data__batch_size=-1), "data.batch_size"),
    ("range", "dropout 1.0", change(model__residual_dropout=1.0), "model.residual_dropout"),
    ("range", "beta1 1.5", change(optimizer__beta1=1.5), "optimizer.beta1"),
    ("range", "weight_decay -0.1", change(optimizer__weight_decay=-0.1), "weight_decay"),
    ("range", "total_steps 0", change(scheduler__total_steps=0), "scheduler.total_steps"),
    ("range", "max_nonfinite 0", change(runtime__max_nonfinite_steps=0), "max_nonfinite_steps"),
    ("range", "max_keep 0", change(runtime__checkpoint__max_keep=0), "checkpoint.max_keep"),
    ("range", "vocab_size 1", change(model__vocab_size=1), "model.vocab_size"),
    ("range", "max_grad_norm 0", change(optimizer__max_grad_norm=0), "max_grad_norm"),
    ("range", "norm_eps 0", change(model__norm_eps=0), "model.norm_eps"),
    # ---- unknown keys and values
    ("unknown", "model.hidden", change(model__hidden=64), "did you mean"),
    ("unknown", "top-level section", change(training={}), "training: unknown key"),
    ("unknown", "checkpoint.every", change(runtime__checkpoint__every=2), "checkpoint.every"),
    ("unknown", "data.shuffle", change(data__shuffle=True), "data.shuffle"),
    ("unknown", "precision fp64", change(runtime__precision="fp64"), "runtime.precision"),
    ("unknown", "algorithm adam", change(optimizer__algorithm="adam"), "optimizer.algorithm"),
    ("unknown", "strategy cosine", change(scheduler__strategy="cosine"), "scheduler.strategy"),
    ("unknown", "device tpu", change(runtime__device="tpu"), "runtime.device"),
    # ---- inconsistent fields
    ("inconsistent", "heads 5", change(model__num_attention_heads=5), "divisible"),
    ("inconsistent", "kv heads 3", change(model__num_key_value_heads=3), "divisible"),
    ("inconsistent", "seq > positions", change(data__sequence_length=64), "exceeds"),
    ("inconsistent", "warmup >= total", change(scheduler__warmup_steps=40), "smaller than"),
    ("inconsistent", "no length", change(scheduler__total_steps=None), "total_epochs"),
    ("inconsistent", "min_lr > peak", change(scheduler__min_lr=1.0), "above the peak"),
    (
        "inconsistent",
        "odd head size",
        change(model__hidden_size=12, model__num_attention_heads=4),
        "even",
    ),
    ("inconsistent", "vocab < tokenizer", change(model__vocab_size=100), "smaller than the"),
    # ---- missing fields and files
    ("missing", "model section", change(model=DELETE), "model: required"),
    ("missing", "learning_rate", change(optimizer__learning_rate=DELETE), "learning_rate"),
    (
        "missing",
        "tokenizer file",
        change(tokenizer__tokenizer_json="/nonexistent/tokenizer.json"),
        "not found",
    ),
    ("missing", "data file", change(data__train_shards=["/nonexistent/a.jsonl"]), "not found"),
    ("missing", "no data", change(data__train_shards=[]), "data.train_shards"),
    (
        "missing",
        "special tokens file",
        change(tokenizer__special_tokens="/nonexistent/special_tokens.txt"),
        "special tokens file not found",
    ),
    (
        "missing",
        "corrupt tokenizer",
        beside("tokenizer.json", "{not a tokenizer", tokenizer__tokenizer_json="tokenizer.json"),
        "tokenizer",
    ),
    # ---- broken files
    ("broken", "unclosed bracket", text("model:\n  hidden_size: [64\n"), "not valid YAML"),
    ("broken", "tab indent", text("model:\n\thidden_size: 64\n"), "not valid YAML"),
    ("broken", "top-level list", text("- model\n- data\n"), "expected a mapping"),
    ("broken", "empty file", text(""), "expected a mapping"),
    ("broken", "not UTF-8", text(b"model:\n  hidden_size: \xff\xfe\n"), "UTF-8"),
    (
        "broken",
        "streaming_config.json",
        beside("streaming_config.json", "{not json"),
        "not valid JSON",
    ),
    (
        "broken",
        "streaming_config.json key",
        beside("streaming_config.json", json.dumps({"dataset": "x", "max_sample": 1})),
        "max_sample",
    ),
]


@pytest.mark.parametrize(
    ("kind", "case", "words"),
    [(k, c, w) for k, _, c, w in CASES],
    ids=[f"{k}:{i}" for k, i, *_ in CASES],
)
def test_bad_config_is_refused_with_one_line(corpus, tmp_path, capsys, kind, case, words):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    case(tiny_config(corpus), run_dir, corpus)
    written = tree(run_dir)
    corpus_before = tree(corpus)
    code = train_in_process(run_dir / "training.yaml")
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0, out
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lmstream train: error: ") and words in lines[0], lines[0]
    assert tree(run_dir) == written, "a refused config wrote files"
    assert tree(corpus) == corpus_before


def test_missing_config_file_and_folder(tmp_path, capsys):
    for path in (tmp_path / "nothere.yaml", tmp_path):
        assert train_in_process(path) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not found" in err[0], err
    assert tree(tmp_path) == set()


def test_at_least_40_malformed_configs():
    assert len(CASES) + 2 >= 40
    assert {k for k, *_ in CASES} == {
        "type",
        "range",
        "unknown",
        "inconsistent",
        "missing",
        "broken",
    }
