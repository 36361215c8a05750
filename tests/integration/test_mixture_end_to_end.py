"""A mixture from the command line to a trained run: `lmstream orchestrate --stream --dataset A
--dataset B --weights 0.75 0.25` and then `lmstream train` on what it wrote, on local files and on
a hub id served by the loopback Hub stand-in (tests/support/hub_server.py, via HF_ENDPOINT):
README's worked example, run as written.

The training half needs the loader's side of mixtures (lmstream.data.mixture); where that is not
installed, the test stops after orchestrate with a skip that says so.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.reliability.support import subprocess_env
from tests.support.hub_server import HubStandIn
from tests.support.training import apply_overrides, train_in_process

from lmstream.cli import main
from lmstream.config import load_streaming_config
from lmstream.corpus import kjv_documents

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
WEIGHTS = ("0.75", "0.25")
# orchestrate's tiny recipe cut to a seconds-long run with evaluation and checkpoint at its end
SHORT = {
    "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_layers": 2,
    "model.num_attention_heads": 4, "model.num_key_value_heads": 4,
    "data.batch_size": 4, "data.sequence_length": 64, "data.num_workers": 2,
    "data.shuffle_buffer_size": 64, "data.validation_documents": 10,
    "scheduler.total_steps": 8, "scheduler.warmup_steps": 2,
    "runtime.log_every_n_steps": 1, "runtime.checkpoint.every_n_steps": 8,
    "runtime.evaluation.every_n_steps": 8, "runtime.evaluation.max_batches": 2,
}  # fmt: skip


def _prose(path: Path, n: int = 300) -> Path:
    docs = itertools.islice(kjv_documents(), n)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def _code(path: Path, n: int = 300) -> Path:
    docs = [f"def f_{i}(x):\n" + "    x = x * 3 + 1\n" * (1 + i % 9) for i in range(n)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def _orchestrate_args(ws: Path, first: str, second: str) -> list[str]:
    return ["orchestrate", "--stream", "--no-progress", "--dataset", first, "--dataset", second,
            "--weights", *WEIGHTS, "--vocab-size", "400", "--model-size", "tiny",
            "--experiment", "mix", "--workspace", str(ws)]  # fmt: skip


def _shorten(training_yaml: Path) -> None:
    data = yaml.safe_load(training_yaml.read_text())
    training_yaml.write_text(yaml.safe_dump(apply_overrides(data, dict(SHORT)), sort_keys=False))


def _need_mixture_loader() -> None:
    pytest.importorskip(
        "lmstream.data.mixture", reason="the loader side of mixtures (issue #14) is not here yet"
    )


def _per_source_tokens(run_dir: Path) -> dict[str, int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if any(k.startswith("tokens_seen/") for k in r)][-1]
    return {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("tokens_seen/")}


def test_local_files(tmp_path, capsys):
    prose, code = _prose(tmp_path / "prose.jsonl"), _code(tmp_path / "code.jsonl")
    ws = tmp_path / "ws"
    assert main(_orchestrate_args(ws, str(prose), str(code))) == 0, capsys.readouterr().err
    run = ws / "runs" / "mix"
    cfg = load_streaming_config(run / "streaming_config.json")
    assert [s.name for s in cfg.source_list()] == ["prose", "code"]
    assert cfg.weights() == [0.75, 0.25]
    _shorten(run / "training.yaml")
    _need_mixture_loader()
    assert train_in_process(run / "training.yaml") == 0, capsys.readouterr().err
    seen = _per_source_tokens(run)
    assert set(seen) == {"prose", "code"} and seen["prose"] > seen["code"] > 0


def readme_example() -> list[list[str]]:
    """The commands of README.md's worked example (its "Data mixtures" section's sh block)."""
    text = README.read_text(encoding="utf-8").split("## Data mixtures", 1)[1]
    block = re.search(r"```sh\n(.*?)```", text, flags=re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line]


def test_readme_example_with_a_hub_id_through_the_stand_in(tmp_path):
    """README's worked example as written (a hub id and a local file), its hub dataset served by
    the stand-in under the same id; /workspace is a temporary folder, orchestrate gets
    --model-size tiny and its training.yaml is cut short. Both commands run as subprocesses, as
    huggingface_hub reads its endpoint once, at import."""
    commands = readme_example()
    assert [c[:2] for c in commands] == [["lmstream", "orchestrate"], ["lmstream", "train"]]
    ws = tmp_path / "workspace"
    (ws / "data").mkdir(parents=True)
    _code(ws / "data" / "code.jsonl")
    prose = _prose(tmp_path / "prose.jsonl").read_bytes().splitlines(keepends=True)
    hub_id = next(a for a in commands[0] if "/" in a and not a.startswith("/"))
    with HubStandIn() as hub:
        hub.datasets[hub_id] = {
            "data/train-00000.jsonl": b"".join(prose[:90]),
            "data/train-00001.jsonl": b"".join(prose[90:]),
        }
        env = {k: v for k, v in subprocess_env().items()
               if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")}  # fmt: skip
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip

        def lmstream(argv: list[str]) -> subprocess.CompletedProcess:
            args = [a.replace("/workspace", str(ws)) for a in argv[1:]]
            if args[0] == "orchestrate":
                args += ["--model-size", "tiny", "--no-progress"]
            return subprocess.run(
                [sys.executable, "-m", "lmstream", *args], env=env, capture_output=True,
                text=True, timeout=300,
            )  # fmt: skip

        done = lmstream(commands[0])
        assert done.returncode == 0, done.stderr
        names = [
            s.name
            for s in load_streaming_config(_run_dir(ws) / "streaming_config.json").source_list()
        ]
        assert names == ["fineweb-edu", "code"]
        assert "  fineweb-edu: " in done.stdout and "  code: " in done.stdout  # shares reported
        assert any(f"/datasets/{hub_id}/resolve/" in r[1] for r in hub.requests)
        _shorten(_run_dir(ws) / "training.yaml")
        _need_mixture_loader()
        done = lmstream(commands[1])
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen = _per_source_tokens(_run_dir(ws))
    assert set(seen) == {"fineweb-edu", "code"} and seen["fineweb-edu"] > seen["code"] > 0


def _run_dir(ws: Path) -> Path:
    return ws / "runs" / "edu-code"


def test_hf_url_glob_through_the_stand_in(tmp_path):
    """An hf:// glob (huggingface_hub's filesystem) is a source like an s3:// one."""
    prose = _prose(tmp_path / "prose.jsonl").read_bytes().splitlines(keepends=True)
    with HubStandIn() as hub:
        hub.datasets["acme/kjv"] = {"data/a.jsonl": b"".join(prose[:100]),
                                    "data/b.jsonl": b"".join(prose[100:])}  # fmt: skip
        env = {k: v for k, v in subprocess_env().items()
               if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")}  # fmt: skip
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        done = subprocess.run(
            [sys.executable, "-m", "lmstream", "orchestrate", "--stream", "--no-progress",
             "--dataset", "hf://datasets/acme/kjv/data/*.jsonl", "--vocab-size", "300",
             "--experiment", "hf", "--workspace", str(tmp_path / "ws")],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "samples: 300 documents" in done.stdout  # both files, every line
