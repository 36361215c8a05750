"""Flags derived from one typed definition (lmstream.flags): help, parsing, one-line errors."""

from __future__ import annotations

import argparse
import re

import pytest
from pydantic import PositiveFloat

from lmstream.cli import COMMANDS, build_parser
from lmstream.errors import ConfigError
from lmstream.flags import Options, add_flags, flag, from_args
from lmstream.orchestrate_options import OrchestrateOptions


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_each_default_once(command):
    text = _subparsers(build_parser())[command].format_help()
    entries = re.split(r"\n  (?=-)", re.sub(r"\s+\n\s+", " ", text))
    twice = [e.splitlines()[0] for e in entries if e.count("(default") > 1]
    assert not twice, twice
    assert "(default: None)" not in text


def test_orchestrate_flags_parse_into_the_options_model(tmp_path):
    parser = argparse.ArgumentParser()
    add_flags(parser, OrchestrateOptions)
    args = parser.parse_args(
        ["--experiment", "e", "--data-files", "a.txt", "b.txt", "--name", "sub",
         "--special-tokens", '["<|x|>"]', "--no-progress", "--max-samples", "7"]
    )  # fmt: skip
    opts = from_args(OrchestrateOptions, args)
    assert opts.data_files == ["a.txt", "b.txt"] and opts.subset == "sub"
    assert opts.special_tokens == ["<|x|>"] and opts.progress is False and opts.max_samples == 7
    assert opts.datasets == ["HuggingFaceFW/fineweb"] and opts.vocab_size == 50000  # the defaults
    mix = from_args(
        OrchestrateOptions,
        parser.parse_args(["--experiment", "e", "--stream", "--dataset", "a", "--dataset", "b",
                           "--weights", "3", "1"]),
    )  # fmt: skip
    assert mix.datasets == ["a", "b"] and mix.weights == [3.0, 1.0] and mix.sources is None
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --experiment is required


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"max_samples": 0}, "--max-samples: must be at least 1 (given: 0)"),
        ({"seed": -1}, "--seed: must be at least 0 (given: -1)"),
        ({"vocab_size": 100}, "--vocab-size: 100 is too small"),
        ({"special_tokens": ["[oops"]}, "--special-tokens: not a JSON list"),
        ({"model_size": "7b"}, "--model-size: unknown size '7b'"),
        ({"stream": True, "pretokenize": True}, "--pretokenize: writes token shards"),
        ({"stream": False, "data_files": None}, "no data: pass --stream"),
        ({"validation_split": "train"}, "--validation-split: 'train' is also --split"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(values, line):
    with pytest.raises(ConfigError) as err:
        OrchestrateOptions(**{"experiment": "e", "stream": True, **values})
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(line), err.value


def test_a_new_flag_is_one_field():
    """Flags like the mixture's (repeated --dataset, --weights W1 W2, --sources FILE) are one
    field each: argparse, defaults and range checks follow from it."""

    class Mixture(Options):
        dataset: list[str] = flag(["fineweb"], "a dataset (repeat the flag)", repeat=True)
        weights: list[PositiveFloat] | None = flag(None, "sampling weights", metavar="W")
        sources: str | None = flag(None, "a file listing the sources", metavar="FILE")

    parser = argparse.ArgumentParser()
    add_flags(parser, Mixture)
    given = ["--dataset", "a", "--dataset", "b", "--weights", "0.7", "0.3", "--sources", "s.txt"]
    opts = from_args(Mixture, parser.parse_args(given))
    assert opts.dataset == ["a", "b"] and opts.weights == [0.7, 0.3] and opts.sources == "s.txt"
    assert from_args(Mixture, parser.parse_args([])).dataset == ["fineweb"]
    with pytest.raises(ConfigError, match="--weights"):
        Mixture(weights=[1.0, -1.0])


def test_orchestrate_help_says_the_source_flags_apply_to_each_source():
    """With a mixture, --max-samples is each source's pass (README), not the sample's total."""
    text = _subparsers(build_parser())["orchestrate"].format_help()
    entry = text.split("--max-samples MAX_SAMPLES")[-1].split("--batch-size")[0]  # not the usage
    entry = re.sub(r"\s+", " ", entry)
    assert "each source" in entry, entry
