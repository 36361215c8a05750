"""A local lm-evaluation-harness multiple-choice task (a task YAML and its jsonl, made from
the KJV text shipped in a package), for --include-path: benchmark tests never touch the network."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from lmstream.corpus import kjv_documents

TASK = "kjv_choice"


def task_documents() -> list[dict]:
    """Pick the true continuation of a KJV sentence among three (from other sentences)."""
    pairs = []
    for text in itertools.islice(kjv_documents(), 40):
        words = text.split()
        if len(words) >= 12:
            pairs.append((" ".join(words[:6]), " ".join(words[6:10])))
    rows = []
    for i, (question, answer) in enumerate(pairs[:12]):
        others = [pairs[(i + k) % len(pairs)][1] for k in (3, 7)]
        choices = [others[0], answer, others[1]] if i % 2 else [answer, *others]
        rows.append({"question": question, "choices": choices, "answer": choices.index(answer)})
    return rows


def write_task(folder: Path) -> Path:
    """folder/kjv_choice.yaml and its data; returns the folder (the --include-path)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in task_documents()))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return folder


def write_generation_task(folder: Path, repeats: int, max_gen_toks: int = 24) -> str:
    """folder/kjv_generate.yaml: greedy generation after each question of task_documents(),
    each asked ``repeats`` times (the harness's own ``repeats``), so its length is chosen by
    the caller; exact match against the answer. Returns the task name."""
    name = "kjv_generate"
    write_task(folder)  # the data file
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / f'{TASK}.jsonl'}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{choices[answer]}}"\n'
        f"repeats: {repeats}\n"
        f"generation_kwargs:\n  until: ['@@']\n  max_gen_toks: {max_gen_toks}\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return name


def write_rolling_task(folder: Path) -> str:
    """folder/kjv_rolling.yaml: perplexity (loglikelihood_rolling) of four long KJV paragraphs,
    each longer than a 64-token window, so the harness scores them in several windows.
    Returns the task name."""
    name = "kjv_rolling"
    folder.mkdir(parents=True, exist_ok=True)
    long_docs = [d for d in itertools.islice(kjv_documents(), 200) if len(d) > 600][:4]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in long_docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: loglikelihood_rolling\n"
        "doc_to_text: ''\n"
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n"
    )
    return name
