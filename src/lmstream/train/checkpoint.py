"""The checkpoint folder format: atomic save, verify, resolve, and load (for resume, and a model
with its tokenizer for eval, generate and export). When to save, rotation and the best set are
:mod:`lmstream.train.checkpointer`'s.

Format (docs/ARCHITECTURE.md, "Checkpoint format"): ``DIR/step-00001500/`` holding model.safetensors, config.yaml,
tokenizer.json, special_tokens.txt, trainer_state.pt and manifest.json. A sharded (FSDP)
checkpoint holds ``sharded/`` (torch.distributed.checkpoint: model and optimizer, one file per
rank) instead of model.safetensors and the optimizer; see :mod:`lmstream.train.sharded`. The folder is written as
a hidden sibling ``.tmp-step-...``, every file fsynced, the manifest (sizes + sha256) written
last, then renamed into place, so a crash mid-write never leaves a folder that resume would pick
(docs/ARCHITECTURE.md, decision 5). Old checkpoints are deleted only after the new one is complete.

Loading never runs code from a file: weights come from safetensors and the trainer state from
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from lmstream.config import (
    SPECIAL_TOKENS_DEFAULT,
    TrainingConfig,
    dump_training_config,
    load_training_config,
)
from lmstream.errors import CheckpointError, ConfigError
from lmstream.failures import first_line, is_write_failure
from lmstream.model.transformer import Transformer
from lmstream.train.folders import remove_folder, writer_gone
from lmstream.workspace import CHECKPOINTS, SPECIAL_TOKENS

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_FILE = SPECIAL_TOKENS
TRAINER_STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint files of an FSDP checkpoint
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failed(tmp: Path, final: Path, exc: BaseException) -> CheckpointError:
    """Remove the half-written temporary folder; the one-line error to raise."""
    shutil.rmtree(tmp, ignore_errors=True)
    reason = first_line(exc)
    return CheckpointError(
        f"cannot write checkpoint {final} ({reason}); is the disk full? Free space (or set "
        "runtime.checkpoint.directory elsewhere) and continue with --resume: the earlier "
        "checkpoints are intact"
    )


def write_metadata_files(folder: Path, config: TrainingConfig, trainer_state: dict | None) -> None:
    """Everything but the weights: config.yaml, tokenizer.json, special_tokens.txt and (unless
    None: a weights-only checkpoint) trainer_state.pt."""
    dump_training_config(config, folder / CONFIG_FILE)
    tok = config.tokenizer.tokenizer_json
    if tok is not None and Path(tok).is_file():
        shutil.copyfile(tok, folder / TOKENIZER_FILE)
    special = config.tokenizer.special_tokens
    if special is not None and Path(special).is_file():
        shutil.copyfile(special, folder / SPECIAL_TOKENS_FILE)
    else:
        (folder / SPECIAL_TOKENS_FILE).write_text(json.dumps(SPECIAL_TOKENS_DEFAULT) + "\n")
    if trainer_state is not None:
        torch.save(trainer_state, folder / TRAINER_STATE_FILE)


def write_model_file(folder: Path, model_state: dict[str, torch.Tensor]) -> None:
    """model.safetensors: fp32, plain names."""
    # fp32, contiguous, unshared: safetensors refuses tensors that share storage (tied weights).
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model_state.items()
    }
    save_file(tensors, str(folder / MODEL_FILE), metadata={"format": "pt"})
    with_user_umask(folder / MODEL_FILE)


def with_user_umask(path: Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would (0666 minus the umask): safetensors
    writes its files 0600, which hid a shared workspace's weights from the rest of a team."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    # Read, not set-and-restore: os.umask() changes the whole process for a moment, and
    # checkpoints are written from a background thread while the main one creates files.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_payload(
    folder: Path,
    model_state: dict[str, torch.Tensor],
    config: TrainingConfig,
    trainer_state: dict | None,
) -> None:
    write_model_file(folder, model_state)
    write_metadata_files(folder, config, trainer_state)


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    config: TrainingConfig,
    trainer_state: dict | None,
    *,
    extra_manifest: dict | None = None,
) -> Path:
    """Write ``directory/step-NNNNNNNN`` atomically and return its path.

    ``config`` should be the resolved config with ``model.vocab_size`` set to the real vocabulary.
    ``extra_manifest`` adds keys to manifest.json (the best-checkpoint keeper stores val_loss).
    ``trainer_state`` None writes a weights-only checkpoint (e.g. a consolidated one).
    """
    final, tmp = begin_checkpoint(directory, step)
    try:
        _write_payload(tmp, model_state, config, trainer_state)
        return finish_checkpoint(tmp, final, step, extra_manifest)
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        raise write_failed(tmp, final, exc) from None


def begin_checkpoint(
    directory: str | os.PathLike, step: int, tag: str | None = None
) -> tuple[Path, Path]:
    """(final path, fresh temporary sibling to write into). ``tag`` names the temporary (the
    pid by default; sharded saves pass rank 0's, so every rank writes into the same folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final, tmp = directory / checkpoint_name(step), temporary_path(directory, step, tag)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return final, tmp


def temporary_path(directory: str | os.PathLike, step: int, tag: str | None = None) -> Path:
    """Where a checkpoint of ``step`` is written before its rename into place."""
    return Path(directory) / f"{_TMP_PREFIX}{checkpoint_name(step)}-{tag or os.getpid()}"


def finish_checkpoint(
    tmp: Path,
    final: Path,
    step: int,
    extra_manifest: dict | None = None,
    known_files: dict[str, dict] | None = None,
) -> Path:
    """fsync every file under ``tmp``, write the manifest last, rename into place.
    ``known_files`` (manifest entries of files linked from a complete checkpoint) are not hashed
    again: their content is the already verified one."""
    files = {}
    known_files = known_files or {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(path)
        name = path.relative_to(tmp).as_posix()
        entry = known_files.get(name)
        if entry is None or entry.get("size") != path.stat().st_size:
            entry = {"size": path.stat().st_size, "sha256": _sha256(path)}
        files[name] = entry
    for folder in [p for p in tmp.rglob("*") if p.is_dir()]:
        _fsync_dir(folder)
    manifest = {"step": step, "files": files, **(extra_manifest or {})}
    manifest_path = tmp / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_file(manifest_path)
    _fsync_dir(tmp)
    directory = final.parent
    if final.exists():  # the same step saved again (e.g. a resumed run's final save): replace it
        # A kill between these two renames leaves the complete old folder as .tmp-old-*:
        # _recover_replaced puts it back.
        old = directory / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        remove_folder(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(directory)
    _remove_stale_temporaries(directory)
    return final


def _recover_replaced(directory: Path) -> None:
    """Put back a complete checkpoint that a kill between the two renames of a re-save left
    only as ``.tmp-old-step-N-PID`` (resume would not see it, the next save would delete it)."""
    for old in directory.glob(f"{_TMP_PREFIX}old-step-*"):
        name = old.name[len(f"{_TMP_PREFIX}old-") :].rsplit("-", 1)[0]
        final = directory / name
        if (
            _STEP_RE.match(name)
            and not final.exists()
            and writer_gone(old)
            and _is_complete(old, check_hashes=False)
        ):
            with contextlib.suppress(OSError):  # e.g. a read-only folder: leave it
                os.rename(old, final)
                log.warning("recovered %s from an interrupted re-save (%s)", final, old.name)


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary folders left by a crash mid-write are never complete: delete those of this
    process and of processes that no longer run (a live one may be another writer's)."""
    _recover_replaced(directory)
    for path in directory.glob(f"{_TMP_PREFIX}*"):
        if path.is_dir() and writer_gone(path):
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def read_manifest(path: Path) -> dict:
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        int(manifest["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path}: corrupted manifest ({exc})") from None
    if not isinstance(files, dict):
        raise CheckpointError(f"{manifest_path}: corrupted manifest (no file list)")
    return manifest


def verify_checkpoint(path: str | os.PathLike, *, check_hashes: bool = True) -> dict:
    """Raise CheckpointError unless every file in the manifest exists with its size (and
    sha256 when ``check_hashes``); returns the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, meta in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint ({name} is missing)")
        size = file.stat().st_size
        if size != meta.get("size"):
            raise CheckpointError(
                f"{path}: corrupted checkpoint ({name} has {size} bytes, the manifest says {meta.get('size')})"
            )
        if check_hashes and _sha256(file) != meta.get("sha256"):
            raise CheckpointError(f"{path}: corrupted checkpoint ({name} fails its sha256 check)")
    return manifest


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Step folders under ``directory`` (complete or not), oldest first; temporaries ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    _recover_replaced(directory)
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if p.is_dir() and (m := _STEP_RE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def _is_complete(path: Path, check_hashes: bool) -> bool:
    try:
        verify_checkpoint(path, check_hashes=check_hashes)
    except CheckpointError:
        return False
    return True


def complete_checkpoints(directory: str | os.PathLike, *, check_hashes: bool = False) -> list[Path]:
    return [p for p in list_checkpoints(directory) if _is_complete(p, check_hashes)]


def resolve_checkpoint(path: str | os.PathLike, *, check_hashes: bool = False) -> Path:
    """The checkpoint that ``path`` names: a step folder itself, else the newest complete one in
    a checkpoints folder or in a run folder's ``checkpoints/``. Newer folders that are incomplete
    or corrupted are skipped with a warning. CheckpointError if there is none."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, checkpoints folder or run folder")
    if (path / MANIFEST_FILE).exists() or _STEP_RE.match(path.name):
        try:
            verify_checkpoint(path, check_hashes=check_hashes)
        except CheckpointError as err:  # named explicitly: refused, with what to use instead
            raise CheckpointError(f"{err}; {_newest_intact(path, check_hashes)}") from None
        return path
    candidates = list_checkpoints(path)
    if not candidates and (path / CHECKPOINTS).is_dir():
        path = path / CHECKPOINTS
        candidates = list_checkpoints(path)
    for candidate in reversed(candidates):
        try:
            verify_checkpoint(candidate, check_hashes=check_hashes)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s; trying an older one", err)
            continue
        return candidate
    raise CheckpointError(
        f"{path}: no complete checkpoint found (looked for step-NNNNNNNN folders with a {MANIFEST_FILE})"
    )


def _newest_intact(damaged: Path, check_hashes: bool) -> str:
    """Where to go instead of a damaged checkpoint: the newest one beside it that verifies."""
    for candidate in reversed(list_checkpoints(damaged.parent)):
        if candidate.name != damaged.name and _is_complete(candidate, check_hashes):
            return f"the newest intact checkpoint there is {candidate}"
    return f"there is no intact checkpoint in {damaged.parent}"


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether a checkpoint folder holds torch.distributed.checkpoint shards (FSDP) instead of
    model.safetensors."""
    return (Path(path) / SHARDED_DIR).is_dir() and not (Path(path) / MODEL_FILE).exists()


def load_config(path: Path) -> TrainingConfig:
    """The resolved config saved in a checkpoint folder."""
    try:
        return load_training_config(path / CONFIG_FILE)
    except ConfigError as err:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid saved config: {err}") from None


def load_model_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], TrainingConfig]:
    """Weights (plain names, fp32, CPU) and the resolved config of a checkpoint (any path that
    :func:`resolve_checkpoint` accepts). A sharded (FSDP) checkpoint is consolidated in memory."""
    path = resolve_checkpoint(path)
    if is_sharded(path):
        from lmstream.train.sharded import load_consolidated_model

        return load_consolidated_model(path), load_config(path)
    try:
        state = load_file(str(path / MODEL_FILE))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path / MODEL_FILE}: cannot read weights ({exc})") from None
    return state, load_config(path)


def load_trainer_state(path: str | os.PathLike) -> dict:
    """Optimizer, step, RNG and data state. ``weights_only=True``: a pickle that would run code
    is refused with a CheckpointError instead of executed."""
    path = resolve_checkpoint(path)
    file = path / TRAINER_STATE_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path}: no {TRAINER_STATE_FILE}; this checkpoint holds weights only"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for refused globals, RuntimeError for bad zips
        raise CheckpointError(
            f"{file}: refused or unreadable trainer state ({first_line(exc)})"
        ) from None


# ------------------------------------------------------------------------ inference
def load_checkpoint_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", *, verify: bool = True
) -> tuple[Transformer, TrainingConfig, Path]:
    """The model of a checkpoint (any path resolve_checkpoint accepts, for eval, generate and export), in eval mode, fp32.
    ``verify`` checks every file's sha256 against the manifest first (what resume does), so a
    damaged file is refused instead of silently evaluated, sampled or exported."""
    folder = resolve_checkpoint(path, check_hashes=verify)
    state, cfg = load_model_state(folder)
    if "embed.weight" not in state:
        raise CheckpointError(
            f"{folder}: model.safetensors has no 'embed.weight'; not an lmstream model"
        )
    vocab = cfg.model.vocab_size or state["embed.weight"].shape[0]
    with torch.device("meta"):
        model = Transformer(cfg.model, vocab)
    model.to_empty(device=device)
    model.rope.reset_parameters()  # non-persistent: not in the file
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
        raise CheckpointError(
            f"{folder}: weights do not match the saved model config ({first})"
        ) from None
    return model.eval(), cfg, folder


def load_checkpoint_tokenizer(folder: Path, cfg: TrainingConfig) -> Tokenizer:
    """The checkpoint's own tokenizer.json, else the one its config points to."""
    for candidate in (folder / TOKENIZER_FILE, cfg.tokenizer.tokenizer_json):
        if candidate is not None and Path(candidate).is_file():
            try:
                return Tokenizer.from_file(str(candidate))
            except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
                raise CheckpointError(f"{candidate}: cannot load tokenizer ({exc})") from None
    raise CheckpointError(
        f"{folder}: no {TOKENIZER_FILE} in the checkpoint and {cfg.tokenizer.tokenizer_json} is missing"
    )
