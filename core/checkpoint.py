"""Checkpoint layout and the model half of loading/saving.

    RUN_DIR/checkpoints/step-00001234/
        model.pt     model.state_dict(): OLMo keys, loadable by olmo.model.OLMo(olmo_config(spec))
        model.yaml   the ModelSpec
        meta.json    {"step", "tokens", "budget_tokens", "final", "lr_decayed", "kind", ...}
        optim.pt     optimizer state (training checkpoints only; ``load_whole_optimizer`` reads it
                     into a sharded model's optimizer too)
        optim/       instead of optim.pt under ``parallel: fsdp``: the sharded optimizer state in
                     torch's distributed checkpoint format (``save_sharded``; every rank writes its
                     shards), keyed by parameter name, so it loads on any number of ranks
                     (``load_sharded_optimizer``: resharded as the loading ranks shard the model)
        state.pt     trainer state: schedule position, RNG states, data position (training only)
        SHA256SUMS   sha256 of every other file (optim/'s by relative path), in ``sha256sum`` format (``sha256sum -c SHA256SUMS``
                     checks it by hand); written last, before the rename
    RUN_DIR/checkpoints/latest   text file naming the newest complete step directory

A step directory is written under a temporary name and renamed when complete, so a directory
named ``step-*`` is always whole when written. Disks and copies can still damage it later
(a truncated or bit-flipped file): ``verify_checkpoint`` compares every file with SHA256SUMS (a
checkpoint from before SHA256SUMS: its ``.pt`` zip archives' CRC-32s and meta.json's syntax),
and ``resume_checkpoint`` resumes from the newest intact checkpoint, warning which damaged one
it passed over. ``load_model`` accepts a step directory, a run directory (its
final checkpoint, else the latest) or a ``checkpoints/`` directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

from .atomic import atomic_write_text
from .config import from_dict, parse_count, to_dict
from .dist import DistInfo, barrier, full_state_dict, is_sharded, reshard
from .errors import CheckpointError, ConfigError
from .model import attach_shapes, build_model, unwrap
from .model_spec import ModelSpec, count_params
from .paths import expand_path

STEP_PREFIX = "step-"
MANIFEST = "SHA256SUMS"


class DamagedCheckpointWarning(UserWarning):
    """A resume passed over a damaged checkpoint for an older intact one."""


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def write_checkpoint(
    ckpt_root: str | os.PathLike,
    step: int,
    files: dict[str, object],
    meta: dict,
    spec: ModelSpec | None,
    dirs: dict[str, Path] | None = None,
) -> Path:
    """Write ``files`` (name -> object for torch.save) + model.yaml + meta.json atomically; ``dirs``
    (name -> a directory already written, e.g. by every rank's ``save_sharded``) are moved in.
    ``spec`` None (a transformers model, SFT's: no ModelSpec): no model.yaml."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, obj in files.items():
        torch.save(obj, tmp / name)
    if spec is not None:
        (tmp / "model.yaml").write_text(yaml.safe_dump(to_dict(spec), sort_keys=False))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for name, src in (dirs or {}).items():
        os.replace(src, tmp / name)
    sums = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name + "\n")
    return final


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[Path]:
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    root = Path(ckpt_root)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(step_dir: str | os.PathLike) -> list[str]:
    """What is wrong with a step directory's files (empty: intact). With SHA256SUMS: every listed
    file exists with its recorded sha256. Without (older checkpoints): meta.json parses and every
    ``.pt`` archive's members match their zip CRC-32s (which catches truncation and bit flips)."""
    d = Path(step_dir)
    manifest = d / MANIFEST
    problems = []
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            want, _, name = line.partition("  ")
            f = d / name
            if not f.is_file():
                problems.append(f"{name} missing")
            elif file_sha256(f) != want:
                problems.append(f"{name} sha256 differs from {MANIFEST}")
        if not problems:
            return []
    for name in ("meta.json", "model.pt"):
        if not (d / name).is_file():
            problems.append(f"{name} missing")
    try:
        json.loads((d / "meta.json").read_text())
    except (OSError, ValueError) as e:
        problems.append(f"meta.json unreadable ({e})")
    if not manifest.is_file():
        for f in sorted(d.glob("*.pt")):
            try:
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                if bad is not None:
                    problems.append(f"{f.name}: member {bad} fails its CRC")
            except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
                problems.append(f"{f.name}: not a whole archive ({e})")
    return list(dict.fromkeys(problems))


def resume_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint under ``ckpt_root`` (None: none at all), for resuming a run.

    Newer damaged checkpoints are passed over with a ``DamagedCheckpointWarning`` naming the
    damaged and the chosen one (they stay on disk; the resumed run overwrites them when it gets
    there); if every checkpoint is damaged, a CheckpointError lists them."""
    found = list_checkpoints(ckpt_root)
    latest = latest_checkpoint(ckpt_root)
    if latest is not None and latest not in found:
        found.append(latest)
    damaged = []
    for cand in sorted(found, key=lambda p: p.name, reverse=True):
        problems = verify_checkpoint(cand)
        if not problems:
            if damaged:
                what = "; ".join(f"{p} ({', '.join(why)})" for p, why in damaged)
                warnings.warn(
                    f"damaged checkpoint {what}: resuming from {cand} instead", DamagedCheckpointWarning, stacklevel=2
                )
            return cand
        damaged.append((cand, problems))
    if damaged:
        what = "; ".join(f"{p} ({', '.join(why)})" for p, why in damaged)
        raise CheckpointError(
            f"every checkpoint under {ckpt_root} is damaged: {what}; remove them (or overwrite=true) to start over"
        )
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step directory from a step dir, a checkpoints/ dir or a run dir (final, else latest).

    ``RUN_DIR@tokens=N`` names the first checkpoint at or past the token mark N, where a mark is
    rounded to the nearest whole step as the trainer rounds budgets and marks (so the checkpoint
    saved for mark N is found even when N is not a multiple of the tokens per step);
    ``RUN_DIR@step=N`` the first checkpoint at or past step N.
    """
    text = expand_path(path)
    m = re.fullmatch(r"(.*)@(tokens|step)=([0-9.eEkKmMbBgGtT_]+)", text)
    if m:
        return _checkpoint_at(Path(m.group(1)), m.group(2), m.group(3), text)
    p = Path(text)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if (p / "meta.json").is_file() and (p / "model.pt").is_file():
        return p
    for root in (p / "checkpoints", p):
        cks = list_checkpoints(root)
        if cks:
            finals = [c for c in cks if _read_meta(c).get("final")]
            return finals[-1] if finals else (latest_checkpoint(root) or cks[-1])
    raise CheckpointError(f"{p}: no checkpoint here (expected model.pt + meta.json, or checkpoints/step-*/)")


def _checkpoint_at(run: Path, key: str, value: str, text: str) -> Path:
    try:
        want = parse_count(value)
    except ValueError:
        raise CheckpointError(f"{text}: '{value}' is not a count") from None
    root = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    cks = list_checkpoints(root)
    if not cks:
        raise CheckpointError(f"{text}: no checkpoints under {root}")
    have = []
    for c in cks:
        meta = _read_meta(c)
        got, step = int(meta.get(key, -1)), max(int(meta.get("step", 1)), 1)
        slack = int(meta.get("tokens", 0)) / step / 2 if key == "tokens" else 0
        have.append(got)
        if got >= want - slack:
            return c
    raise CheckpointError(f"{text}: no checkpoint with {key} >= {want} under {root} (have {key}: {have})")


def read_meta(step_dir: str | os.PathLike) -> dict:
    """A step directory's meta.json (CheckpointError naming the file if unreadable)."""
    return _read_meta(Path(step_dir))


def _read_meta(step_dir: Path) -> dict:
    try:
        return json.loads((step_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{step_dir / 'meta.json'}: unreadable checkpoint metadata ({e})") from None


def read_spec(step_dir: str | os.PathLike) -> ModelSpec:
    f = Path(step_dir) / "model.yaml"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (not an overtrain checkpoint?)")
    try:
        return from_dict(ModelSpec, yaml.safe_load(f.read_text()), where="")
    except ConfigError as e:
        raise CheckpointError(f"{f}: {e}") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", expect: ModelSpec | None = None):
    """(model, spec, meta) from a checkpoint; muP ``infshape``s are re-attached (torch.save drops them).

    ``expect`` (optional) must agree with the checkpoint's architecture and vocabulary.
    """
    step_dir = resolve_checkpoint(path)
    spec = read_spec(step_dir)
    meta = _read_meta(step_dir)
    if expect is not None:
        keys = ("d_model", "n_layers", "head_dim", "mlp_ratio", "vocab_size", "embedding_size", "parametrization")
        diff = {k: (getattr(spec, k), getattr(expect, k)) for k in keys if getattr(spec, k) != getattr(expect, k)}
        if diff:
            raise CheckpointError(
                f"{step_dir}: checkpoint model differs from the configured one: {diff} (checkpoint, config)"
            )
    model = build_model(spec, device="cpu", init=False)
    try:
        state = torch.load(step_dir / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(
            f"{step_dir / 'model.pt'}: cannot load model weights ({str(e).splitlines()[0]})"
        ) from None
    attach_shapes(model, spec)
    meta = dict(meta, path=str(step_dir))
    return model.to(device), spec, meta


def save_model_checkpoint(
    ckpt_root: str | os.PathLike, step: int, model, spec: ModelSpec, meta: dict, extra: dict | None = None
) -> Path:
    """Save weights (+ optional optimizer/trainer state under ``extra``) as a complete step directory."""
    files = {"model.pt": unwrap(model).state_dict()}
    files.update(extra or {})
    return write_checkpoint(ckpt_root, step, files, meta, spec)


# ------------------------------------------------------------------------- training checkpoints


def remove_stale_temps(ckpt_root: str | os.PathLike) -> None:
    """Remove half-written (``.tmp-*``) and half-deleted (``.trash-*``) directories a killed
    process left; they are never named ``step-*``, so nothing ever took them for checkpoints."""
    root = Path(ckpt_root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(ckpt_root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints saved only as ``periodic`` or ``preempt``
    (a stop on a signal); token-mark and final checkpoints are never deleted. Returns the deleted."""
    periodic = [
        p for p in list_checkpoints(ckpt_root) if set(_read_meta(p).get("reasons") or ["?"]) <= {"periodic", "preempt"}
    ]
    gone = periodic[: max(len(periodic) - keep_last, 0)]
    for p in gone:
        trash = p.with_name(f".trash-{p.name}")
        os.replace(p, trash)  # never a half-deleted step-* directory
        shutil.rmtree(trash)
    return gone


def rng_state() -> dict:
    """Python, numpy, torch and (this process's) CUDA RNG states, loadable with weights_only=True."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        # Only the current device: reading every GPU's would open a context on each of them.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict) -> None:
    tuplify = lambda x: tuple(tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x  # noqa: E731
    random.setstate(tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def checkpoint_sha256(step_dir: str | os.PathLike) -> str:
    """sha256 of the checkpoint's model.pt (content identity of the weights), cached per process."""
    f = Path(step_dir) / "model.pt"
    st = f.stat()
    return _sha256_cached(str(f), st.st_size, st.st_mtime_ns)


def checkpoint_provenance(step_dir: str | os.PathLike, spec: ModelSpec, meta: dict) -> dict:
    """The results-row fields that identify a checkpoint."""
    return {
        "checkpoint": str(Path(step_dir).resolve()),
        "checkpoint_sha256": checkpoint_sha256(step_dir),
        "checkpoint_step": meta.get("step"),
        "checkpoint_kind": meta.get("kind"),
        "model": spec.name,
        "non_embedding_params": count_params(spec)["non_embedding_params"],
        "pretrain_tokens": meta.get("tokens"),
        "budget_tokens": meta.get("budget_tokens"),
        "lr_decayed": meta.get("lr_decayed"),
        "final": meta.get("final"),
        "pretrain_run": meta.get("run_dir"),
    }


# ------------------------------------------------------------------ sharded (FSDP) optimizer state


def save_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer state of a (maybe FSDP-sharded) model into ``path`` with torch's distributed
    checkpoint (a collective: every rank writes its own shards; rank 0 the metadata)."""
    import torch.distributed.checkpoint as dcp  # heavy: ~3 s import, sharded runs only
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(model)  # the shards, not parameters an evaluation left gathered, are what the optimizer steps
    dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(path))


def load_sharded_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``save_sharded``'s state into ``optimizer`` of ``model`` as sharded now (any number of ranks,
    sharded or not; every rank calls it)."""
    import torch.distributed.checkpoint as dcp  # heavy: ~3 s import, sharded runs only
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optim": get_optimizer_state_dict(model, optimizer)}  # the layout to read into
    try:
        with warnings.catch_warnings():  # one process reading shards is the point, not a mistake to warn of
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path), no_dist=not torch.distributed.is_initialized())
    except Exception as e:  # noqa: BLE001  (dcp wraps reader errors in its own types)
        raise CheckpointError(f"{path}: cannot load the sharded optimizer state ({str(e).splitlines()[0]})") from None
    set_optimizer_state_dict(model, optimizer, state["optim"])


def save_training_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: DistInfo,
    files: dict[str, object],
    meta: dict,
    spec: ModelSpec | None,
) -> None:
    """A training checkpoint of step ``step`` (a collective: every rank calls it): model.pt (the whole
    weights, gathered on rank 0 under fsdp), the optimizer state (fsdp: ``optim/``, every rank writing
    its shards with ``save_sharded``; else rank 0's ``optim.pt``), and rank 0's ``files`` (e.g.
    state.pt) and ``meta``, written atomically by ``write_checkpoint``. Pre-training and SFT save through it."""
    files, dirs = dict(files), {}
    if is_sharded(model):  # every rank writes its optimizer shards; rank 0 moves them in
        shards = Path(ckpt_root) / f".tmp-{step_dir_name(step)}-optim"
        if info.is_main:
            shutil.rmtree(shards, ignore_errors=True)
            shards.parent.mkdir(parents=True, exist_ok=True)
        barrier()
        save_sharded(shards, model, optimizer)
        dirs["optim"] = shards
    elif info.is_main:
        files["optim.pt"] = optimizer.state_dict()
    weights = full_state_dict(model, info)  # gathered on rank 0 (a collective if sharded)
    if info.is_main:
        write_checkpoint(ckpt_root, step, {"model.pt": weights, **files}, meta, spec, dirs=dirs)
    barrier()


def load_optimizer_state(
    step_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> None:
    """A training checkpoint's optimizer state into ``optimizer`` of ``model`` as laid out now, whatever
    the layout it was saved from: ``optim/`` (sharded, fsdp) loads on any number of ranks, sharded or
    not; ``optim.pt`` (whole: ddp, one process) into a sharded model keeps each rank's shards of it.
    ``model`` is the module the optimizer was built on (not a DDP wrapper: its names are the keys)."""
    if (step_dir / "optim").is_dir():
        load_sharded_optimizer(step_dir / "optim", model, optimizer)
    elif is_sharded(model):
        load_whole_optimizer(step_dir / "optim.pt", model, optimizer)
    else:
        optimizer.load_state_dict(torch.load(step_dir / "optim.pt", map_location=device, weights_only=True))


def load_whole_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """An ``optim.pt`` (a whole optimizer's ``state_dict``, its parameters numbered in group order)
    into ``optimizer`` of ``model`` sharded now (every rank reads the file and keeps its shards). The
    numbers become parameter names by the optimizer's own group order, which ``core.optim`` builds
    the same for the model sharded or not."""
    from torch.distributed.checkpoint.state_dict import (  # heavy: sharded runs only
        StateDictOptions,
        set_optimizer_state_dict,
    )

    saved = torch.load(path, map_location="cpu", weights_only=True)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    whole = {
        "state": {order[i]: s for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, whole, options=StateDictOptions(full_state_dict=True))
