"""Progressive sensitivity: C4 perplexity of theta + eps, eps ~ N(0, gamma^2 Sigma).

Sigma is diagonal: each parameter's initialization variance (``init_stds``), so gamma = 1 adds
noise as large as a fresh initialization. For one seed the unit noise eps/gamma is drawn once (on
CPU, parameter by parameter in ``named_parameters`` order, from a generator seeded by the seed) and
scaled by each gamma: the same noise direction at every gamma and on every device, so the curve
over gamma is smooth and a (checkpoint, gamma, seed) row is reproducible anywhere.

Rows (kind "perturb", ``core.rows.PerturbRow``) go to results.jsonl as they are computed; rows
already there for the same checkpoint contents, gamma, seed and evaluated C4 tokens (count, window
and content: ``c4_tokens_sha256``) are skipped, so a killed study resumes without duplicates. Rows
from before the C4 content was recorded are reused with a warning (``core.identity.same_identity``).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.checkpoint import checkpoint_provenance, load_model
from ..core.dist import resolve_device
from ..core.errors import ConfigError, DataError
from ..core.identity import c4_identity, predicted_tokens, same_identity, warn_predating
from ..core.jsonl import append_record
from ..core.likelihood import perplexity
from ..core.lock import hold
from ..core.model import init_stds
from ..core.rows import Checkpoint, PerturbRow, load_rows
from ..core.tracker import TrackConfig, Tracker, check_trackers, group_name
from ..data.c4 import load_c4


def unit_noise(model, stds: dict[str, float], seed: int) -> dict[str, torch.Tensor]:
    """eps / gamma for every parameter: N(0, std^2) elementwise, drawn on CPU (device-independent)."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        out[name] = z.mul_(stds[name]).to(device=p.device, dtype=p.dtype)
    return out


@torch.no_grad()
def apply_noise(model, base: dict[str, torch.Tensor], noise: dict[str, torch.Tensor], gamma: float) -> None:
    """Set every parameter to base + gamma * noise (gamma = 0 restores the checkpoint exactly)."""
    for name, p in model.named_parameters():
        p.copy_(base[name])
        if gamma:
            p.add_(noise[name], alpha=float(gamma))


# A row's resume identity besides its (gamma, noise seed): the checkpoint and the C4 tokens evaluated.
RESUME_KEYS = ("checkpoint_sha256", "c4_tokens", "seq_len", "c4_tokens_sha256")


def _done(results: Path | None, ref: dict) -> set[tuple]:
    """(gamma, noise seed) of the rows in ``results`` with the identity of ``ref``."""
    if results is None or not results.is_file():
        return set()
    mine = [
        r for r in load_rows(results, warn=False) if isinstance(r, PerturbRow) and same_identity(r, ref, RESUME_KEYS)
    ]
    warn_predating(results, mine, stacklevel=3)
    for r in mine:
        if r.gamma is None or r.noise_seed is None:
            raise DataError(f"{r.where}: perturb row needs 'gamma' and 'noise_seed'")
    return {(float(r.gamma), int(r.noise_seed)) for r in mine}


def perturb_checkpoint(
    checkpoint: str | Path,
    gammas: list[float],
    seeds: list[int],
    c4: str | Path | np.ndarray,
    val_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    results: str | Path | None = None,
    extra: dict | None = None,
    progress: bool = True,
) -> list[dict]:
    """C4 perplexity change under weight noise for each (gamma, seed); returns the new rows.

    ``c4`` is a prepared C4 directory or a token array; ``val_tokens`` caps the predicted tokens
    (a fixed prefix, the same for base and perturbed); ``extra`` keys (e.g. grid axes) are copied
    into every row. Rows are appended to ``results`` one by one when given.
    """
    gammas = [float(g) for g in gammas]
    seeds = [int(s) for s in seeds]
    if not gammas or not seeds:
        raise ConfigError("perturb: --gammas and --seeds need at least one value each")
    if any(g < 0 for g in gammas):
        raise ConfigError(f"perturb: --gammas must be >= 0, got {gammas}")
    device = resolve_device(device or "auto")
    model, spec, meta = load_model(checkpoint, device=device)
    seq_len = seq_len or spec.max_sequence_length
    if isinstance(c4, (str, Path)):
        tokens = load_c4(c4, spec, val_tokens, seq_len)  # vocabulary-checked, the evaluated prefix only
    elif len(c4) < seq_len + 1:
        raise DataError(f"C4 tokens: {len(c4)} validation tokens, need at least {seq_len + 1}")
    else:
        tokens = c4
    results = Path(results) if results is not None else None
    ckpt = Checkpoint(**checkpoint_provenance(meta["path"], spec, meta))
    extra = dict(extra or {})
    common = PerturbRow(
        run_id=f"perturb-{ckpt.checkpoint_sha256[:12]}",
        ckpt=ckpt,
        c4_tokens=predicted_tokens(len(tokens), seq_len, val_tokens),
        c4_tokens_sha256=c4_identity(tokens, seq_len, val_tokens),
        seq_len=seq_len,
        tags=extra.pop("tags", None),
    )
    clash = set(extra) & set(common.schema_keys())
    if clash:
        raise ConfigError(f"perturb: extra keys {sorted(clash)} are row keys of their own")

    def ppl() -> dict:
        return perplexity(
            model, tokens, seq_len, batch_size=batch_size, max_tokens=val_tokens, vocab_size=spec.vocab_size
        )

    t0 = time.time()
    done = _done(results, common.to_dict())
    todo = [(s, g) for s in seeds for g in gammas if (g, s) not in done]
    if not todo:
        return []
    base_eval = ppl()
    assert base_eval["tokens"] == common.c4_tokens  # predicted_tokens mirrors the evaluation's windows
    common = replace(common, c4_ppl_base=base_eval["ppl"], extra=extra)
    stds = init_stds(model, spec)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows: list[dict] = []
    bar = tqdm(
        total=len(todo), desc="perturb", unit="eval", disable=None if progress else True
    )  # None: off when not a TTY
    noise, noise_seed = None, None
    for seed, gamma in todo:
        if seed != noise_seed:
            noise, noise_seed = unit_noise(model, stds, seed), seed
        apply_noise(model, base, noise, gamma)
        ev = ppl()  # also at gamma 0: checks the weights were restored exactly
        row = replace(
            common,
            gamma=gamma,
            noise_seed=seed,
            c4_ppl=ev["ppl"],
            c4_ppl_change=ev["ppl"] - base_eval["ppl"],
            wall_s=time.time() - t0,
            time=time.time(),
        ).to_dict()
        if results is not None:
            append_record(results, row)
        rows.append(row)
        bar.update(1)
        bar.set_postfix(gamma=gamma, seed=seed, ppl=f"{ev['ppl']:.2f}")
    bar.close()
    apply_noise(model, base, noise or {}, 0.0)
    return rows


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class PerturbConfig:
    gammas: list[float] = field(default_factory=list)  # noise scales relative to init std, e.g. 0.01,0.02,0.05
    seeds: list[int] = field(default_factory=lambda: [0])  # noise seeds, e.g. 0,1
    c4: str = ""  # prepared C4 directory (its val.npy is the held-out set)
    val_tokens: int | None = None  # evaluate only this many predicted tokens (None: all)
    seq_len: int | None = None  # evaluation window (None: the model's context)
    batch_size: int = 8  # windows per forward
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    results: str | None = None  # append rows to this results.jsonl
    tags: dict = field(default_factory=dict)  # row labels (grid axes) copied into every row, e.g. tags.seed=1
    log: TrackConfig = field(default_factory=TrackConfig)  # wandb / TensorBoard (run dir: the results file's folder)

    def validate(self) -> None:
        if (self.log.wandb or self.log.tensorboard) and not self.results:
            raise ValueError("log.wandb/log.tensorboard need results=FILE (the tracker's run dir is its folder)")
        if not self.gammas or not self.seeds:
            raise ValueError("gammas and seeds need at least one value each (e.g. gammas=0.01,0.1)")
        if min(self.gammas) < 0:
            raise ValueError(f"gammas must be >= 0, got {self.gammas}")
        if not self.c4:
            raise ValueError("c4 is not set (a prepared C4 directory: c4=DIR)")


def track_perturb(rows: list[dict], cfg: TrackConfig, results: str) -> None:
    """One tracker run per results file: row i at step i (gamma, seed, C4 ppl and its change)."""
    if not rows or not (cfg.wandb or cfg.tensorboard):
        return
    prov = {k: rows[0].get(k) for k in ("model", "pretrain_tokens", "lr_decayed", "checkpoint_sha256")}
    config = {"rows": len(rows), "provenance": {k: v for k, v in rows[0].items() if k not in ("gamma", "time")}}
    tracker = Tracker(Path(results).parent, cfg, group=group_name(prov, "perturb"), job_type="perturb", config=config)
    for i, r in enumerate(rows):
        tracker.log({k: r.get(k) for k in ("gamma", "noise_seed", "c4_ppl", "c4_ppl_change", "c4_ppl_base")}, i)
    tracker.close()


def run(config: PerturbConfig, checkpoint: str) -> int:
    tags = config.tags
    check_trackers(config.log, "perturb")
    lock = hold(f"{config.results}.lock", "perturb") if config.results else nullcontext()  # one writer per results file
    with lock:
        rows = perturb_checkpoint(
            checkpoint,
            config.gammas,
            config.seeds,
            config.c4,
            val_tokens=config.val_tokens,
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            device=config.device,
            results=config.results,
            extra={"tags": tags} if tags else None,
        )
    if rows:
        print(
            f"base C4 perplexity {rows[0]['c4_ppl_base']:.4f} on {rows[0]['c4_tokens']} tokens ({rows[0]['checkpoint']})"
        )
    for r in rows:
        print(
            f"gamma {r['gamma']:<8g} seed {r['noise_seed']:<3d} C4 ppl {r['c4_ppl']:.4f}  change {r['c4_ppl_change']:+.4f}"
        )
    track_perturb(rows, config.log, config.results)
    if not rows:
        print("nothing to do: every (gamma, seed) is already in the results file")
    if config.results:
        print(f"rows appended to {config.results}")
    return 0
