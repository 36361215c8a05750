"""Every `lmstream` command in README.md's code blocks, run in order, so the README cannot drift
from the tool (issue #22: a newcomer following it literally).

What the test changes, and why (everything else runs exactly as written):

* ``/workspace`` becomes a temporary folder, and paths with the ``EXP`` placeholder
  (``runs/EXP/...``, ``export/EXP``) an experiment ``exp`` there: a fresh copy of the README's
  orchestrated experiment before each ``train`` without ``--resume`` (each such example starts
  a run of its own).
* ``HuggingFaceFW/fineweb`` becomes a local JSON-lines file of 600 King James paragraphs: the
  hub is not reachable from the tests, and the README says ``--dataset`` takes a local file.
* ``orchestrate`` gets ``--model-size tiny`` (the README's default 1b model is a GPU model), and
  after it the written training.yaml is cut to 6 steps with evaluation and checkpoints every 3,
  2 validation batches and a 40-document holdout, so the whole README runs in a minute or two on
  a 2-core CPU instead of the tiny recipe's 100 steps (three minutes on a machine shared with
  other jobs).
* ``eval --tasks`` runs a local harness task of the same kind (tests/support/harness_task.py,
  with ``--include-path``) instead of the hub's hellaswag/arc_easy, and ``export --push-to-hub``
  uploads to a loopback stand-in of the Hub (tests/support/hub_server.py), in a subprocess;
  ``[--option value]`` is optional syntax and is not typed.
* Lines that are not ``lmstream`` commands are not run: ``bash scripts/*.sh`` and ``pip``
  install things (the environment under test is already installed), ``tensorboard`` is a viewer,
  and the ``torchrun`` lines are covered by tests/distributed (real 2-rank gloo jobs).

Besides exit codes, the README's layout block must hold: what it marks "(orchestrate)" is exactly
what orchestrate writes, and everything it lists exists once the commands have run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.support.harness_task import TASK, write_task
from tests.support.hub_server import HubStandIn

from lmstream.cli import main as cli_main
from lmstream.corpus import kjv_documents

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
HUB_ID = "HuggingFaceFW/fineweb"
# The later blocks' EXP: a fresh copy of the README's orchestrated (untrained) experiment before
# each `train` without --resume, as each of those examples starts a run of its own (training
# refuses a run folder that already holds checkpoints).
PLACEHOLDER_EXP = "exp"
# The cut applied to the tiny recipe (see the module docstring).
SHORT_RUN = {
    ("scheduler", "total_steps"): 6,
    ("scheduler", "warmup_steps"): 2,
    ("runtime", "log_every_n_steps"): 1,
    ("data", "validation_documents"): 40,
}
SHORT_RUNTIME = {
    "checkpoint": {"every_n_steps": 3},
    "evaluation": {"every_n_steps": 3, "max_batches": 2},
}


def readme_commands(text: str) -> list[list[str]]:
    """The ``lmstream`` commands of the README's bash code blocks, in order, as argv lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "lmstream":
                commands.append(argv)
    return commands


def layout_entries(text: str) -> list[tuple[str, list[str], str]]:
    """The README's workspace layout block as (folder, names listed, which command writes
    them: the "(orchestrate)" or "(train)" that ends each line)."""
    block = text.split("The workspace folder", 1)[1].split("```", 2)[1]
    out = []
    folder = ""
    for line in block.strip().splitlines():
        who = re.search(r"\((\w+)\)\s*$", line)
        assert who, f"the layout line does not say which command writes it: {line!r}"
        if line.startswith("WORKSPACE/"):
            folder, _, line = line.partition(" ")
        # File names (with a dot) and folders (with a slash); the prose after them is not.
        names = [w for w in line.split("(")[0].split() if re.fullmatch(r"\w+\.\w+|\w+/", w)]
        out.append((folder, names, who.group(1)))
    return out


def _folder(ws: Path, folder: str, experiment: str) -> Path:
    return ws / folder.removeprefix("WORKSPACE/").replace("EXP", experiment)


def _substitute(
    argv: list[str], ws: Path, corpus: Path, experiment: str | None, tasks: Path
) -> list[str]:
    out = []
    for arg in argv[1:]:
        if arg.startswith("[") or arg.endswith("]"):
            continue  # [--option value]: optional syntax, not typed
        if arg == HUB_ID:
            arg = str(corpus)
        elif arg.startswith("/workspace"):
            arg = str(ws) + arg[len("/workspace") :]
        elif "EXP" in arg and "/" in arg:
            arg = str(ws / arg.replace("EXP", PLACEHOLDER_EXP))
        elif out and out[-1] == "--tasks":
            arg = TASK  # the harness's hub tasks: a local task of the same kind
        out.append(arg)
    if out[0] == "orchestrate":
        out += ["--model-size", "tiny", "--no-progress"]
    if "--tasks" in out:
        out += ["--include-path", str(tasks)]
    return out


def _run(args: list[str], tmp_path: Path) -> tuple[int, str]:
    """In this process; an upload to the Hub in a subprocess pointed at a loopback stand-in
    (huggingface_hub reads its endpoint once, at import)."""
    if "--push-to-hub" not in args:
        return cli_main(args), ""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    with HubStandIn() as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_readme_test",
                "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "lmstream", *args],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    repo = args[args.index("--push-to-hub") + 1]
    assert proc.returncode != 0 or repo in hub.repos, "nothing reached the Hub stand-in"
    return proc.returncode, proc.stdout + proc.stderr


def _shorten(training_yaml: Path) -> None:
    data = yaml.safe_load(training_yaml.read_text())
    for (section, key), value in SHORT_RUN.items():
        data[section][key] = value
    for section, values in SHORT_RUNTIME.items():
        data["runtime"][section].update(values)
    training_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


def test_every_readme_command_runs_as_written(tmp_path, capsys):
    text = README.read_text(encoding="utf-8")
    commands = readme_commands(text)
    assert [c[1] for c in commands][:2] == ["orchestrate", "train"], "README lost its workflow"
    corpus = tmp_path / "fineweb.jsonl"
    docs = itertools.islice(kjv_documents(), 600)
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ws, experiment = tmp_path / "workspace", None
    tasks = write_task(tmp_path / "tasks")
    fresh = tmp_path / "fresh-run"
    for argv in commands:
        args = _substitute(argv, ws, corpus, experiment, tasks)
        placeholder = ws / "runs" / PLACEHOLDER_EXP
        if args[0] == "train" and "--resume" not in args and str(placeholder) in " ".join(args):
            shutil.rmtree(placeholder, ignore_errors=True)
            shutil.copytree(fresh, placeholder)
        code, more = _run(args, tmp_path)
        out, err = capsys.readouterr()
        assert code == 0, f"README command failed: {shlex.join(argv)}\n{out}\n{err}\n{more}"
        if args[0] == "orchestrate":
            experiment = args[args.index("--experiment") + 1]
            run_dir = ws / "runs" / experiment
            # What the README says orchestrate writes, and nothing more, before any training.
            for folder, names, who in layout_entries(text):
                if who == "orchestrate":
                    found = {p.name for p in _folder(ws, folder, experiment).iterdir()}
                    assert found == {n.rstrip("/") for n in names}, folder
            _shorten(run_dir / "training.yaml")
            shutil.copytree(run_dir, fresh)
    assert experiment is not None
    for folder, names, _ in layout_entries(text):
        base = _folder(ws, folder, experiment)
        assert base.is_dir(), folder
        for name in names:
            assert (base / name.rstrip("/")).exists(), f"{folder}{name}"
