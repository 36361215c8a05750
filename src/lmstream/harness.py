"""Benchmarks with EleutherAI's lm-evaluation-harness (the ``eval`` extra): `lmstream eval
--tasks` and ``runtime.evaluation.tasks`` in the training loop.

The harness talks to models through its ``LM`` interface. :class:`LmstreamLM` implements it on
lmstream's own Transformer, so a checkpoint (plain or sharded) is evaluated as it is, with no
export step and no second copy of the weights. Scoring follows the harness's own HF model
class: the continuation's summed log-probability given the context, contexts not prefixed with
a BOS token (an empty context gets ``<|endoftext|>``), left-truncated to the model's window.

Results are ``{task: {metric: value}}`` with the harness's ``acc,none`` keys shortened to
``acc`` (other filters keep theirs: ``exact_match_strict-match``); the training loop logs them
as ``eval/<task>/<metric>``.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from lmstream.config import EOT_TOKEN
from lmstream.errors import ConfigError, LmstreamError


def require_harness(field: str) -> None:
    """ConfigError naming ``field`` when lm-eval is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{field}: the lm-eval package is not installed; pip install 'lmstream[eval]'"
        ) from None


def _lm_class():
    """LmstreamLM is defined on first use: its base class lives in the optional lm_eval."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class LmstreamLM(TemplateLM):
        def __init__(self, model: nn.Module, tokenizer: Tokenizer, batch_size: int = 16):
            super().__init__()
            self.model = model
            self.tokenizer = tokenizer
            self.batch_size = batch_size
            self.max_length = model.config.max_position_embeddings
            self._eot = tokenizer.token_to_id(EOT_TOKEN)
            if self._eot is None:
                raise ConfigError(f"the tokenizer has no {EOT_TOKEN} token; the harness needs one")

        @property
        def eot_token_id(self) -> int:
            return self._eot

        @property
        def device(self) -> torch.device:
            return self.model.embed.weight.device

        @property
        def tokenizer_name(self) -> str:
            return "lmstream-bpe"

        def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
            return self.tokenizer.encode(string, add_special_tokens=False).ids

        def tok_decode(self, ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=False)

        @torch.inference_mode()
        def _score(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
            """(log-prob, greedy) of the last ``n`` tokens of each token list, one batch."""
            width = max(len(ids) for ids, _ in rows) - 1
            inputs = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (ids, _) in enumerate(rows):
                inputs[i, : len(ids) - 1] = torch.tensor(ids[:-1])  # right-padded: causal
            logits, _ = self.model(inputs.to(self.device))  # (B, T, V), stays on the device
            out = []
            for i, (ids, n) in enumerate(rows):
                end = len(ids) - 1
                target = torch.tensor(ids[end + 1 - n :], device=logits.device)  # n may be 0
                # positions predicting the last n tokens: (n, V)
                window = F.log_softmax(logits[i, end - n : end].float(), dim=-1)
                total = window.gather(-1, target[:, None]).sum().item()
                out.append((total, bool((window.argmax(-1) == target).all())))
            return out

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            rows = []
            for _, context, continuation in requests:
                ids = (context + continuation)[-(self.max_length + 1) :]
                rows.append((ids, min(len(continuation), len(ids) - 1)))
            order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
            results: list = [None] * len(rows)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for i, score in zip(chunk, self._score([rows[i] for i in chunk]), strict=True):
                    results[i] = score
            return results

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for request in requests:
                windows = [
                    make_disjoint_window(w)
                    for w in get_rolling_token_windows(
                        token_list=self.tok_encode(request.args[0]),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length,
                        context_len=1,
                    )
                ]
                scored = self._loglikelihood_tokens([(None, c, t) for c, t in windows])
                out.append(sum(logprob for logprob, _ in scored))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            from lmstream.generate import generate_tokens

            out = []
            for request in requests:
                context, gen_kwargs = request.args
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                budget = int(gen_kwargs.get("max_gen_toks", 256))
                # As the HF class: the prompt keeps its last max_length - max_gen_toks tokens,
                # leaving the answer room (at least one token of prompt), and <|endoftext|>
                # always ends the answer.
                keep = max(1, self.max_length - budget)
                prompt = self.tok_encode(context)[-keep:] or [self._eot]
                text, ids = "", []
                tokens = generate_tokens(
                    self.model, prompt, budget, temperature=0, stop_ids=[self._eot]
                )
                for token in tokens:
                    if token == self._eot:
                        break
                    ids.append(token)
                    text = self.tok_decode(ids)
                    if any(stop in text for stop in until):
                        break
                for stop in until:
                    text = text.split(stop)[0]
                out.append(text)
            return out

    return LmstreamLM


# Entries of a task's results that are not scores: the number of examples evaluated would
# otherwise be logged, tabled and put in the model card's model-index as a benchmark result.
_NOT_METRICS = frozenset({"alias", "name", "sample_len", "sample_count"})


def _short_metrics(raw: dict) -> dict[str, float]:
    out = {}
    for key, value in raw.items():
        if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name, _, filt = key.partition(",")
        label = name if filt in ("", "none") else f"{name}_{filt}"
        if math.isfinite(value):
            out[label] = float(value)
    return out


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None, defaults: bool):
    """The harness's task index, built once per process: indexing its thousands of bundled
    task YAMLs takes 5-20 s, so the training loop must not redo it at every evaluation, and
    tasks found in --include-path alone skip it (``defaults=False``)."""
    from lm_eval.tasks import TaskManager

    if include_path is None and not defaults:
        return None
    return TaskManager(include_path=include_path, include_defaults=defaults)


def resolve_tasks(
    tasks: list[str],
    include_path: str | Path | None = None,
    *,
    field: str = "--tasks",
    include_field: str = "--include-path",
):
    """The task manager that knows every one of ``tasks``; ConfigError naming the unknown (as
    ``field``) or a missing ``include_path`` (as ``include_field``): the harness itself skips
    a folder that is not there and then reports its tasks as unknown."""
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"{include_field}: {include_path} is not a folder")
    where = str(include_path) if include_path else None
    manager = _task_manager(where, defaults=False)
    if manager is None or not all(manager.match_tasks([t]) for t in tasks):
        manager = _task_manager(where, defaults=True)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        looked = f" (looked in the harness and {include_path})" if include_path else ""
        raise ConfigError(
            f"{field}: unknown lm-eval task(s) {', '.join(unknown)}{looked}; "
            "`lm-eval ls tasks` lists them, --include-path adds a folder of task YAMLs"
        )
    return manager


def run_tasks(
    model: nn.Module,
    tokenizer: Tokenizer,
    tasks: list[str],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    include_path: str | Path | None = None,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Run harness ``tasks`` on ``model``; ``{task: {metric: value}}``.

    The harness re-seeds Python, numpy and torch; callers in the middle of training keep their
    RNG state around this call (the training loop does).
    """
    import lm_eval

    manager = resolve_tasks(tasks, include_path)
    was_training = model.training
    model.eval()
    try:
        results = lm_eval.simple_evaluate(
            model=_lm_class()(model, tokenizer, batch_size),
            tasks=list(tasks),
            limit=limit,
            num_fewshot=num_fewshot,
            task_manager=manager,
            log_samples=False,
        )
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LmstreamError(f"--tasks: a task's dataset could not be loaded ({first})") from None
    finally:
        model.train(was_training)
    return {task: _short_metrics(raw) for task, raw in results["results"].items()}


def write_results(folder: Path, results: dict, settings: dict) -> Path:
    """eval_results.json beside the checkpoint (the model card reads it)."""
    from lm_eval import __version__ as lm_eval_version

    path = folder / "eval_results.json"
    payload = {"tasks": results, **settings, "lm_eval_version": lm_eval_version}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def format_table(results: dict[str, dict[str, float]]) -> str:
    rows = [("task", "metric", "value")]
    for task, metrics in sorted(results.items()):
        for metric, value in sorted(metrics.items()):
            if not metric.endswith("_stderr"):
                err = metrics.get(f"{metric}_stderr")
                rows.append(
                    (task, metric, f"{value:.4f}" + (f" ± {err:.4f}" if err is not None else ""))
                )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


# How long the other ranks wait for rank 0's benchmarks. Not the process group's timeout
# (LMSTREAM_DIST_TIMEOUT_S, minutes, so that a lost peer ends the job soon): a full benchmark
# on a large model can take longer, and a waiting rank that times out ends the whole job.
HARNESS_WAIT = datetime.timedelta(hours=6)


@functools.cache
def _wait_group():
    """A gloo group with HARNESS_WAIT as its timeout, made once by every rank (a collective);
    gloo so the wait is a CPU barrier whatever the main backend (NCCL's watchdog would apply
    its own timeout)."""
    import torch.distributed as tdist

    return tdist.new_group(backend="gloo", timeout=HARNESS_WAIT)


def evaluate_in_loop(run, tokenizer: Tokenizer) -> dict[str, float]:
    """runtime.evaluation.tasks at an evaluation: ``{"eval/<task>/<metric>": value}`` on rank 0,
    ``{}`` on the others. Collective when distributed (the full weights are gathered so rank 0
    can run the harness alone, as a plain model that no peer waits on). The training RNG state
    is put back afterwards: the harness re-seeds every generator, which would otherwise change
    the dropout and shuffles that follow (and break exact resume)."""
    from lmstream import distributed as dist
    from lmstream.train.state import capture_rng, restore_rng

    ev = run.cfg.runtime.evaluation
    model = dist.unwrap(run.model)
    wait_group = _wait_group() if run.env.world_size > 1 else None  # before rank 0 goes off
    if run.env.world_size > 1:
        state = dist.full_model_state_dict(run.model)  # every rank joins
        if run.env.is_main:
            from lmstream.model.transformer import Transformer

            with torch.device(run.env.device):
                model = Transformer(run.cfg.model, run.cfg.model.vocab_size)
            model.load_state_dict(state)
    results: dict[str, dict[str, float]] = {}
    if run.env.is_main:
        rng = capture_rng()
        try:
            with run.precision.autocast():
                results = run_tasks(
                    model, tokenizer, ev.tasks, limit=ev.tasks_limit,
                    include_path=ev.tasks_include_path,
                )  # fmt: skip
        finally:
            restore_rng(rng)
    if wait_group is not None:
        import torch.distributed as tdist

        tdist.barrier(group=wait_group)
    return {f"eval/{t}/{m}": v for t, metrics in results.items() for m, v in metrics.items()}
