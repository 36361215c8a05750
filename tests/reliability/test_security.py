"""Security: no code runs from files a user may have downloaded, YAML is loaded safely,
trust_remote_code stays off unless asked on the command line.

Payloads are live (a control shows the pickle really runs code when loaded unsafely); each test
checks that the marker file the payload would create never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from tests.reliability.support import tiny_config, tree
from tests.support.training import train_in_process, write_run

from lmstream.cli import main as cli_main
from lmstream.train import checkpoint as ckpt

SRC = Path(__file__).resolve().parents[2] / "src" / "lmstream"


class _Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _reseal(folder: Path, name: str) -> None:
    """Update the manifest for a replaced file, as an attacker shipping a checkpoint would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    file = folder / name
    manifest["files"][name] = {"size": file.stat().st_size, "sha256": ckpt._sha256(file)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def checkpoint(corpus, tmp_path) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus, **{"scheduler.total_steps": 4}))
    assert train_in_process(config) == 0
    return config, ckpt.resolve_checkpoint(run_dir)


def test_malicious_pickle_is_refused_by_train_resume(checkpoint, tmp_path, capsys):
    config, folder = checkpoint
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    torch.save({"evil": _Exploit()}, folder / "trainer_state.pt", pickle_module=pickle)
    _reseal(folder, "trainer_state.pt")
    capsys.readouterr()
    assert train_in_process(config, "--resume") == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused or unreadable trainer state" in err[0], err
    assert not marker.exists()
    torch.load(folder / "trainer_state.pt", weights_only=False)  # control: the payload is live
    assert marker.exists()


def test_pickle_posing_as_weights_is_refused_by_generate(checkpoint, tmp_path, capsys):
    _, folder = checkpoint
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Exploit()))
    _reseal(folder, "model.safetensors")
    capsys.readouterr()
    code = cli_main(["generate", "--checkpoint", str(folder), "--prompt", "In", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and "cannot read weights" in err[-1], err
    assert not marker.exists()


def test_yaml_python_tags_are_not_executed(corpus, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    config = write_run(run_dir, tiny_config(corpus))
    text = config.read_text().replace(
        "seed: 11", f"seed: !!python/object/apply:os.system ['touch {marker}']"
    )
    config.write_text(text)
    written = tree(tmp_path)
    assert train_in_process(config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid YAML" in err[0], err
    assert not marker.exists() and tree(tmp_path) == written


def test_orchestrate_never_enables_remote_code_unless_asked(corpus, tmp_path, capsys):
    data = str(corpus / "train.jsonl")
    common = ["orchestrate", "--stream", "--data-files", data, "--vocab-size", "260",
              "--model-size", "tiny", "--no-progress", "--workspace", str(tmp_path)]  # fmt: skip
    assert cli_main([*common, "--experiment", "plain"]) == 0
    assert cli_main([*common, "--experiment", "asked", "--trust-remote-code"]) == 0
    read = lambda e: json.loads((tmp_path / "runs" / e / "streaming_config.json").read_text())  # noqa: E731
    assert read("plain")["trust_remote_code"] is False
    assert read("asked")["trust_remote_code"] is True


def test_source_never_loads_pickles_or_remote_code_by_default():
    """The code itself: every torch.load is weights_only=True, no pickle.load, and
    trust_remote_code=True appears only behind the user's flag."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text, flags=re.S):
            if "weights_only=True" not in call:
                offenders.append(f"{path.name}: {call}")
        if re.search(r"\bpickle\.loads?\(", text):
            offenders.append(f"{path.name}: pickle.load")
        for line in map(str.strip, text.splitlines()):
            enables = "trust_remote_code" in line and "True" in line
            # The one allowed place: sources.py passes it on when spec.trust_remote_code is set.
            if enables and not line.startswith(("#", '"')) and "kwargs[" not in line:
                offenders.append(f"{path.name}: {line}")
    assert not offenders, offenders
