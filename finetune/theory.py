"""The mechanism on a laptop: the paper's section 4 (a two-layer linear network) as a study of its own.

    overtrain theory configs/theory/demo.yaml [key=value ...]
    overtrain report runs/theory-demo out=runs/theory-demo/report

Model. ``W = W2 W1`` with ``W1`` (m x d) and ``W2`` (d x m), initialized i.i.d. Gaussian with the
per-parameter variances ``Sigma_init``: ``alpha^2 / fan_in`` (``alpha^2 / d`` for W1, ``alpha^2 / m``
for W2); a small ``alpha`` puts training in the incremental-learning regime (Saxe et al.).

Tasks. The pre-training target is ``A = U diag(s) V^T`` (r = len(s) singular values, ``s`` decaying
over orders of magnitude; U, V random orthonormal columns drawn from the data seed). A fine-tuning
task keeps A's singular values and its top ``shared`` directions, and rotates each remaining left
singular vector by ``theta`` towards a direction orthogonal to A's column space:

    u'_i = cos(theta) u_i + sin(theta) q_i    (i > shared; q_i orthonormal, orthogonal to U)
    B    = U' diag(s) V^T                      (theta = 0: B = A, the aligned control)

Losses. Inputs are x ~ N(0, I_d) and labels y = T x (+ noise), so the population loss is

    L_T(W) = E 1/2 ||W x - T x||^2 = 1/2 ||W - T||_F^2     (label noise adds a constant, left out)

and by default training and evaluation use it: there is no example noise, every number is a
function of the seeds alone. With ``data.samples: n`` training uses n examples per task instead
(gradient ``(W - T) S - C`` with ``S = X X^T / n``, ``C = N X^T / n``, N the label noise), the
fine-tuning LR is selected on ``data.val_samples`` held-out examples, and the reported losses
stay the population ones (the test loss).

Protocol (the real study's, ``PROTOCOL.md``):

- pre-training budgets T (steps of full-batch gradient descent), each its own run from the same
  initialization with its LR factor ``core.schedule.lr_factor`` decayed to exactly 0 at its own last
  step (``schedule: constant`` keeps it flat: gradient descent at a fixed small LR approximates the
  theory's gradient flow); the learned singular values of the longest run are traced over time;
- per budget, (a) Gaussian perturbation theta + N(0, gamma^2 Sigma_init): its expected increase of
  the pre-training loss in closed form (``expected_increase``) or, with ``perturb.draws > 0``, the
  average over that many draws; (b) fine-tuning on each task for ``finetune.steps`` steps at every
  LR of ``finetune.lrs`` (LR decayed like pre-training), the tuned LR selected on the task's loss
  (validation loss with samples); (c) the same with ``l2 / 2 ||theta - theta_0||^2`` towards the
  pre-trained weights for every strength in ``finetune.l2`` (0 = none);
- the replicates are (init seed, data seed) pairs: ``seeds`` x ``data_seeds``.

Rows (kind "theory", ``core.rows.TheoryRow``): per replicate, one "pretrain" row per budget, one
"perturb" row per budget and gamma, one "finetune" row per budget, task, LR and l2, a copy of the
tuned LR's row with ``selected: true`` per budget, task and l2, and one "trace" row. A replicate's
rows are written together: ``results.jsonl`` in ``results_dir`` is rewritten whole (atomically,
``core.atomic.atomic_write_bytes``) after each replicate, under the directory's lock
(``core.lock.hold``), so a killed run leaves whole replicates only; a rerun with the same config
(``config_hash``: every setting but names, paths and the seed lists) skips the replicates already
there (rows of another config in the same file are kept; the report shows each config as its own
study).

Divergence: a network whose squared residual gradient (its loss, for the population) exceeds
``DIVERGED`` or is not finite stops there and is marked ``diverged``; its LR is never the tuned one
while another LR is finite, and the report leaves its points out of the fixed-LR curves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.config import config_digest
from ..core.errors import ConfigError
from ..core.identity import identity_dict, no_result
from ..core.jsonl import encode_record, read_records
from ..core.lock import hold
from ..core.rows import TheoryRow
from ..core.schedule import lr_factor

RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".theory.lock"
DIVERGED = 1e6  # a loss above this (or not finite) is a diverged run: its weights are frozen there


@dataclass
class TaskSpec:
    name: str = "misaligned"  # the task's label in rows and figures
    theta_deg: float = 90.0  # rotation of the non-shared left singular directions (0: B = A, the aligned control)


@dataclass
class PretrainSpec:
    budgets: list[int] = field(
        default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    )  # steps, one run each
    lr: float = 0.5  # peak LR (ours: stable for s_1 = 1, whose curvature is about 2 s_1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay to 0 at each run's end; constant: none
    trace_points: int = 40  # incremental learning: singular values at this many log-spaced steps of the longest run


@dataclass
class PerturbSpec:
    gammas: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0])  # noise scale in units of the init std
    draws: int = 0  # noise draws per point; 0: the exact expectation (closed form)


@dataclass
class FinetuneSpec:
    steps: int = 50  # gradient steps per fine-tuning run (fixed across budgets)
    lrs: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.8, 1.6, 3.2, 6.4])  # the LR sweep (tuned per budget)
    l2: list[float] = field(
        default_factory=lambda: [0.0, 0.01, 0.03, 0.1]
    )  # strengths of L2 towards the pre-trained weights
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # the fine-tuning LR's decay (to 0 at its last step)


@dataclass
class DataSpec:
    samples: int = 0  # training examples per task; 0: the population loss (no example noise)
    val_samples: int = 0  # held-out examples that select the fine-tuning LR (0: the population loss)
    label_noise: float = 0.0  # std of Gaussian label noise (with samples)


@dataclass
class TheoryConfig:
    """A linear-network study (module doc). The paper gives none of these values: every one is ours."""

    name: str = no_result("theory")  # the study's label in rows and figures
    results_dir: str = no_result("runs/theory")  # results.jsonl (and the lock) go here
    seeds: list[int] = no_result(factory=lambda: [0, 1, 2])  # initialization seeds (replicates)
    data_seeds: list[int] = no_result(factory=lambda: [0, 1])  # target (and sample) seeds (replicates)
    d: int = 16  # input = output dimension
    width: int = 16  # hidden width m
    alpha: float = 1e-3  # initialization scale: entries N(0, alpha^2 / fan_in)
    singular_values: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.12, 0.06, 0.03])  # A's spectrum
    shared: int = 4  # top directions every fine-tuning task shares with A
    tasks: list[TaskSpec] = field(
        default_factory=lambda: [TaskSpec("aligned", 0.0), TaskSpec("misaligned", 90.0)]
    )  # fine-tuning tasks
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)  # the budgets and their schedule
    perturb: PerturbSpec = field(default_factory=PerturbSpec)  # (a) Gaussian weight noise
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)  # (b, c) the LR sweep and the L2 strengths
    data: DataSpec = field(default_factory=DataSpec)  # population loss (default) or finite samples

    def validate(self) -> None:
        r = len(self.singular_values)
        if self.d < 1 or self.width < 1:
            raise ValueError(f"d and width must be >= 1, got d={self.d}, width={self.width}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not self.singular_values or any(not s > 0 for s in self.singular_values):
            raise ValueError(
                f"singular_values must be a non-empty list of positive numbers, got {self.singular_values}"
            )
        if list(self.singular_values) != sorted(self.singular_values, reverse=True):
            raise ValueError(f"singular_values must be in decreasing order, got {self.singular_values}")
        if not 0 <= self.shared <= r:
            raise ValueError(f"shared must be in [0, {r}] (len(singular_values)), got {self.shared}")
        if r > self.d or 2 * r - self.shared > self.d:
            raise ValueError(
                f"d={self.d} is too small: A's {r} directions and the {r - self.shared} rotated ones need "
                f"d >= {max(r, 2 * r - self.shared)}"
            )
        if not self.seeds or not self.data_seeds:
            raise ValueError("seeds and data_seeds must be non-empty lists")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.data_seeds)) != len(self.data_seeds):
            raise ValueError("seeds and data_seeds must not repeat a seed")
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be a non-empty list with distinct names, got {names}")
        b = self.pretrain.budgets
        if not b or any(x < 2 for x in b) or b != sorted(set(b)):
            raise ValueError(f"pretrain.budgets must be increasing, distinct step counts >= 2, got {b}")
        for key, v in (("pretrain.lr", self.pretrain.lr),) + tuple(("finetune.lrs", x) for x in self.finetune.lrs):
            if not v > 0:
                raise ValueError(f"{key} must be > 0, got {v}")
        if not self.finetune.lrs:
            raise ValueError("finetune.lrs must not be empty")
        if not self.finetune.l2 or any(x < 0 for x in self.finetune.l2):
            raise ValueError(f"finetune.l2 must be a non-empty list of strengths >= 0, got {self.finetune.l2}")
        if self.finetune.steps < 2:
            raise ValueError(f"finetune.steps must be >= 2, got {self.finetune.steps}")
        if any(g < 0 for g in self.perturb.gammas) or self.perturb.draws < 0:
            raise ValueError("perturb.gammas must be >= 0 and perturb.draws >= 0")
        if self.pretrain.trace_points < 2:
            raise ValueError(f"pretrain.trace_points must be >= 2, got {self.pretrain.trace_points}")
        if self.data.samples < 0 or self.data.val_samples < 0 or self.data.label_noise < 0:
            raise ValueError("data.samples, data.val_samples and data.label_noise must be >= 0")
        if self.data.label_noise and not self.data.samples:
            raise ValueError("data.label_noise needs data.samples > 0 (the population loss has no label noise)")


def config_hash(cfg: TheoryConfig) -> str:
    """The rows' resume identity: every setting that changes a number (not names, paths, seed lists)."""
    return config_digest(identity_dict(cfg))


# ------------------------------------------------------------------------------------ the model


def targets(cfg: TheoryConfig, data_seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A and each task's B (module doc), from the data seed."""
    rng = np.random.default_rng([int(data_seed), 0])
    d, s, k = cfg.d, np.asarray(cfg.singular_values, dtype=np.float64), cfg.shared
    r = len(s)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # U = q[:, :r]; the rotations point into q[:, r:]
    p, _ = np.linalg.qr(rng.standard_normal((d, d)))
    u, v = q[:, :r], p[:, :r]
    a = (u * s) @ v.T
    tasks = {}
    for t in cfg.tasks:
        th = math.radians(t.theta_deg)
        ub = u.copy()
        ub[:, k:] = math.cos(th) * u[:, k:] + math.sin(th) * q[:, r : 2 * r - k]
        tasks[t.name] = (ub * s) @ v.T
    return a, tasks


def init_std(cfg: TheoryConfig) -> tuple[float, float]:
    """Per-parameter init std of W1 and W2 (``Sigma_init``'s square roots)."""
    return cfg.alpha / math.sqrt(cfg.d), cfg.alpha / math.sqrt(cfg.width)


def init_weights(cfg: TheoryConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([int(seed), 1])
    s1, s2 = init_std(cfg)
    return rng.standard_normal((cfg.width, cfg.d)) * s1, rng.standard_normal((cfg.d, cfg.width)) * s2


def loss(w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Population loss 1/2 ||W - T||_F^2 over the last two axes."""
    return 0.5 * np.square(w - t).sum((-1, -2))


@dataclass
class Samples:
    """A task's finite training (or validation) set as its moments: ``cov`` = X X^T / n, ``cross`` =
    N X^T / n, ``noise`` = 1/2 mean ||N||^2; None fields mean the population (cov = I, no noise)."""

    cov: np.ndarray | None = None
    cross: np.ndarray | None = None
    noise: float = 0.0


def draw_samples(cfg: TheoryConfig, n: int, rng: np.random.Generator) -> Samples:
    if not n:
        return Samples()
    x = rng.standard_normal((cfg.d, n))
    noise = rng.standard_normal((cfg.d, n)) * cfg.data.label_noise
    return Samples(x @ x.T / n, noise @ x.T / n, 0.5 * float(np.square(noise).sum()) / n)


def grad_w(w: np.ndarray, t: np.ndarray, smp: Samples) -> np.ndarray:
    """d/dW of the (empirical) loss: W - T for the population, (W - T) S - C for samples."""
    g = w - t
    if smp.cov is not None:
        g = g @ smp.cov - smp.cross
    return g


def sample_loss(w: np.ndarray, t: np.ndarray, smp: Samples) -> np.ndarray:
    """The loss that ``grad_w`` descends (population or empirical, module doc)."""
    if smp.cov is None:
        return loss(w, t)
    e = w - t
    return 0.5 * np.einsum("...ij,jk,...ik->...", e, smp.cov, e) - np.einsum("...ij,ij->...", e, smp.cross) + smp.noise


def factors(total: int, length: int, schedule: str) -> np.ndarray:
    """LR factors of a run of ``total`` steps, padded with 0 to ``length`` (``core.schedule.lr_factor``)."""
    out = np.zeros(length)
    if schedule == "constant":
        out[:total] = 1.0
    else:
        out[:total] = [lr_factor(i, total, 0, schedule) for i in range(total)]
    return out


def gd(
    w1: np.ndarray,
    w2: np.ndarray,
    target: np.ndarray,
    lrs: np.ndarray,
    smp: Samples,
    l2: np.ndarray | float = 0.0,
    anchor: tuple[np.ndarray, np.ndarray] | None = None,
    trace: tuple[np.ndarray, int] | None = None,
):
    """Full-batch gradient descent on a batch of networks (leading axes), one step per row of
    ``lrs`` (steps, *batch): ``lrs[i]`` is each network's LR at step i (0: it stands still). With
    ``l2`` (broadcast over the batch) and ``anchor`` = (W1_0, W2_0), adds l2/2 ||theta - theta_0||^2.
    ``trace`` = (steps to record, batch index): the singular values of W2 W1 of that network there.
    Returns (W1, W2, diverged mask, [(step, singular values)])."""
    w1, w2 = w1.copy(), w2.copy()
    l2 = np.asarray(l2, dtype=np.float64)[..., None, None]
    diverged = np.zeros(w1.shape[:-2], dtype=bool)
    recorded = []
    marks = set(trace[0].tolist()) if trace is not None else set()
    for i in range(lrs.shape[0]):
        if i in marks:
            recorded.append((i, np.linalg.svd(w2[trace[1]] @ w1[trace[1]], compute_uv=False)))
        g = grad_w(w2 @ w1, target, smp)
        g2 = g @ np.swapaxes(w1, -1, -2)
        g1 = np.swapaxes(w2, -1, -2) @ g
        if anchor is not None:
            g2 = g2 + l2 * (w2 - anchor[1])
            g1 = g1 + l2 * (w1 - anchor[0])
        with np.errstate(over="ignore", invalid="ignore"):
            # blown up: the squared residual gradient (the loss, for the population) beyond DIVERGED or
            # not finite; such a network stops where it is (weights still finite) and is marked
            diverged |= ~(np.square(g).sum((-1, -2)) < DIVERGED)
        step = lrs[i][..., None, None]
        if diverged.any():
            step = np.where(diverged[..., None, None], 0.0, step)
            g1 = np.where(diverged[..., None, None], 0.0, g1)
            g2 = np.where(diverged[..., None, None], 0.0, g2)
        w2 = w2 - step * g2
        w1 = w1 - step * g1
    if lrs.shape[0] in marks:
        recorded.append((lrs.shape[0], np.linalg.svd(w2[trace[1]] @ w1[trace[1]], compute_uv=False)))
    return w1, w2, diverged, recorded


def expected_increase(w1: np.ndarray, w2: np.ndarray, s1: float, s2: float, gamma: float) -> np.ndarray:
    """E L((W2 + E2)(W1 + E1)) - L(W2 W1) for E1 ~ N(0, (gamma s1)^2), E2 ~ N(0, (gamma s2)^2) entrywise,
    any target (every cross term has mean zero):

        1/2 gamma^2 (s1^2 d_in ||W2||_F^2 + s2^2 d_out ||W1||_F^2) + 1/2 gamma^4 s1^2 s2^2 m d_in d_out
    """
    m, d_in = w1.shape[-2:]
    d_out = w2.shape[-2]
    g2 = gamma * gamma
    lin = s1 * s1 * d_in * np.square(w2).sum((-1, -2)) + s2 * s2 * d_out * np.square(w1).sum((-1, -2))
    return 0.5 * g2 * lin + 0.5 * g2 * g2 * (s1 * s2) ** 2 * m * d_in * d_out


def sampled_increase(
    w1: np.ndarray, w2: np.ndarray, target: np.ndarray, s1: float, s2: float, gamma: float, draws: int, rng
) -> np.ndarray:
    """The same increase averaged over ``draws`` noise draws (the same unit draws for every gamma)."""
    e1 = rng.standard_normal((draws, *w1.shape)) * s1
    e2 = rng.standard_normal((draws, *w2.shape)) * s2
    hit = loss((w2 + gamma * e2) @ (w1 + gamma * e1), target)
    return hit.mean(0) - loss(w2 @ w1, target)


# ------------------------------------------------------------------------------------ the study


def replicate_rows(cfg: TheoryConfig, seed: int, data_seed: int) -> list[dict]:
    """Every row of one (init seed, data seed) replicate (module doc)."""
    t0 = time.time()
    a, tasks = targets(cfg, data_seed)
    data_rng = np.random.default_rng([int(data_seed), 2])
    pre_smp = draw_samples(cfg, cfg.data.samples, data_rng)
    ft_smp = {n: draw_samples(cfg, cfg.data.samples, data_rng) for n in tasks}
    val_smp = {n: draw_samples(cfg, cfg.data.val_samples, data_rng) for n in tasks}
    w1_0, w2_0 = init_weights(cfg, seed)
    s1, s2 = init_std(cfg)
    budgets = np.asarray(cfg.pretrain.budgets)
    nb, longest = len(budgets), int(budgets[-1])
    r = len(cfg.singular_values)

    # pre-training: every budget at once, each with its own schedule (0 after its end)
    lr_table = np.stack([factors(int(b), longest, cfg.pretrain.schedule) for b in budgets], 1) * cfg.pretrain.lr
    marks = np.unique(np.geomspace(1, longest, cfg.pretrain.trace_points).round().astype(int))
    w1, w2, pre_div, trace = gd(
        np.repeat(w1_0[None], nb, 0), np.repeat(w2_0[None], nb, 0), a, lr_table, pre_smp, trace=(marks, nb - 1)
    )
    base = loss(w2 @ w1, a)
    common = {
        "study": cfg.name,
        "config_hash": config_hash(cfg),
        "seed": int(seed),
        "data_seed": int(data_seed),
        "pretrain_lr": cfg.pretrain.lr,
        "schedule": cfg.pretrain.schedule,
    }
    rows: list[dict] = [
        {
            **common,
            "measure": "trace",
            "budget_steps": longest,
            "target_singular_values": list(cfg.singular_values),
            "trace_steps": [int(i) for i, _ in trace],
            "trace_singular_values": [sv[:r].tolist() for _, sv in trace],
        }
    ]
    svals = np.linalg.svd(w2 @ w1, compute_uv=False)[:, :r]
    for j, b in enumerate(budgets):
        rows.append(
            {
                **common,
                "measure": "pretrain",
                "budget_steps": int(b),
                "diverged": bool(pre_div[j]),
                "pretrain_loss": float(base[j]),
                "singular_values": svals[j].tolist(),
                "finetune_losses": {n: float(loss(w2[j] @ w1[j], t)) for n, t in tasks.items()},
            }
        )

    # (a) perturbation
    noise_rng = np.random.default_rng([int(seed), int(data_seed), 3])
    for g in cfg.perturb.gammas:
        if cfg.perturb.draws:
            inc = sampled_increase(w1, w2, a, s1, s2, g, cfg.perturb.draws, noise_rng)
        else:
            inc = expected_increase(w1, w2, s1, s2, g)
        for j, b in enumerate(budgets):
            rows.append(
                {
                    **common,
                    "measure": "perturb",
                    "budget_steps": int(b),
                    "gamma": float(g),
                    "noise_draws": cfg.perturb.draws,
                    "pretrain_loss_base": float(base[j]),
                    "pretrain_loss": float(base[j] + inc[j]),
                    "pretrain_loss_increase": float(inc[j]),
                }
            )

    # (b, c) fine-tuning: batch (budget, LR, l2) per task
    ft = cfg.finetune
    lrs, l2s = np.asarray(ft.lrs, dtype=np.float64), np.asarray(ft.l2, dtype=np.float64)
    shape = (nb, len(lrs), len(l2s))
    f = factors(ft.steps, ft.steps, ft.schedule)
    lr_steps = f[:, None, None, None] * np.broadcast_to(lrs[None, :, None], shape)[None]
    p1 = np.broadcast_to(w1[:, None, None], (*shape, *w1.shape[1:]))
    p2 = np.broadcast_to(w2[:, None, None], (*shape, *w2.shape[1:]))
    theta = {t.name: t.theta_deg for t in cfg.tasks}
    for name, b_t in tasks.items():
        f1, f2, div, _ = gd(p1, p2, b_t, lr_steps, ft_smp[name], l2=l2s[None, None, :], anchor=(p1, p2))
        w = f2 @ f1
        after_a, after_b = loss(w, a), loss(w, b_t)
        val = sample_loss(w, b_t, val_smp[name]) if cfg.data.val_samples else after_b
        val = np.where(div | ~np.isfinite(val), np.inf, val)
        for j, bud in enumerate(budgets):
            for q, lam in enumerate(l2s):
                per_lr = []
                for i, lr in enumerate(lrs):
                    per_lr.append(
                        {
                            **common,
                            "measure": "finetune",
                            "task": name,
                            "theta_deg": float(theta[name]),
                            "budget_steps": int(bud),
                            "finetune_steps": ft.steps,
                            "lr": float(lr),
                            "l2": float(lam),
                            "selected": False,
                            "diverged": bool(div[j, i, q]),
                            "pretrain_loss_base": float(base[j]),
                            "pretrain_loss": float(after_a[j, i, q]),
                            "finetune_loss": float(after_b[j, i, q]),
                            "finetune_val_loss": float(val[j, i, q]),
                        }
                    )
                rows += per_lr
                best = int(np.argmin(val[j, :, q]))  # diverged LRs are inf: never chosen while one is finite
                rows.append(
                    {
                        **per_lr[best],
                        "selected": True,
                        "selected_from": [float(x) for x in lrs],
                        "selected_by": "finetune_val_loss" if cfg.data.val_samples else "finetune_loss",
                    }
                )
    now = time.time()
    for row in rows:
        row["wall_s"] = round(now - t0, 3)
        row["time"] = now
    return [TheoryRow.from_dict({"kind": "theory", **row}).to_dict() for row in rows]


def run_theory(cfg: TheoryConfig, progress: bool = True) -> tuple[Path, int, int]:
    """Run every replicate not yet in ``results_dir/results.jsonl``; (results path, replicates run, skipped)."""
    out = Path(cfg.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    key = config_hash(cfg)
    with hold(out / LOCK_FILE, "theory"):
        rows = list(read_records(path, warn=True)) if path.is_file() else []
        data = b"".join(encode_record(r) for r in rows)  # what is there (less a torn tail), encoded once
        done = {
            (r.get("seed"), r.get("data_seed"))
            for r in rows
            if r.get("kind") == "theory" and r.get("config_hash") == key and r.get("measure") == "trace"
        }
        todo = [(s, ds) for ds in cfg.data_seeds for s in cfg.seeds if (s, ds) not in done]
        for n, (s, ds) in enumerate(todo, 1):
            data += b"".join(encode_record(r) for r in replicate_rows(cfg, s, ds))
            atomic_write_bytes(path, data)
            if progress:
                print(f"theory {cfg.name}: replicate seed={s} data_seed={ds} done ({n}/{len(todo)})", flush=True)
    return path, len(todo), len(cfg.seeds) * len(cfg.data_seeds) - len(todo)


# ------------------------------------------------------------------------------------------- CLI


def run(cfg: TheoryConfig) -> int:
    t0 = time.time()
    path, ran, skipped = run_theory(cfg)
    if not path.is_file():
        raise ConfigError(f"{path}: no rows written")
    print(
        f"theory {cfg.name}: {ran} replicate(s) run, {skipped} already there, {time.time() - t0:.1f}s; rows in {path}\n"
        f"  figures and verdict: overtrain report {path.parent} out={path.parent / 'report'}"
    )
    return 0
