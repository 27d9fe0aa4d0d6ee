"""``overtrain coord-check MODEL out=DIR [key=value ...]``: muP's coordinate check on real C4 tokens.

Procedure (``mup.coord_check._get_coord_data``; Yang et al. 2022, "Tensor Programs V", the coordinate check):
build the model at each of several widths (same depth, head_dim and base width; only d_model
changes), train it for ``steps`` optimizer steps with ``MuAdamW`` (through the project's
``train_step``) on one fixed batch of real C4 tokens, and record, during the forward pass of step
t, the size of every layer's output as mup's ``l1`` statistic: mean |x| over all coordinates.
t = 1 is the initialization, t = k is after k - 1 updates. Averaged over ``seeds`` inits.

Criterion: for every layer, the least-squares slope of log(l1) against log(width) at the last
step. muP keeps every activation Theta(1) in width, so its slopes are ~0 up to finite-width noise
(measured: max +0.07 for olmo-15m at widths 64..512, 0.00 for tiny at 16..128). Standard
parameterization (SP) has two growth signatures: a constant-std init makes projections grow like
sqrt(width) (slope 0.5) and Adam's Theta(1)-per-entry updates make hidden activations and logits
grow like width or faster (measured: slopes 0.7..2.4 by step 3). The default tolerance 0.25 sits
halfway between muP's 0 and the milder SP signature, 0.5: a layer growing like width^0.25 is 2x
larger at 16x the width, a scaling bug rather than noise. Breaking one muP ingredient at a time
fails the check too (tiny, 16..128, 3 steps: no readout multiplier 0.67, constant hidden init
1.04, plain AdamW 0.38). Only growth fails: shrinking is expected (muP logits are O(1/sqrt(width))
at init). The default LR 3e-3 is large enough for SP to blow up within 3 steps and small enough
for the few-step trajectory of muP to stay smooth (1e-2 makes a tiny model oscillate by step 4).

``grad_clip=1`` runs the same check with the global gradient-norm clip pre-training uses
(``optim.grad_clip``): clipping rescales a step's whole gradient by one factor, which Adam's
normalization undoes up to its moment averaging and eps, so muP's slopes should stay ~0 (measured:
docs/mup_transfer.md).

Writes ``DIR/coord_<parametrization>.json`` (``coord_<parametrization>_clip<G>`` with a clip; all numbers) and ``DIR/coord_<parametrization>.png``
(one panel per step; x = width on a log2 axis, y = mean |activation|, one line per layer type,
averaged over blocks). Exits 0 when every layer passes, 1 otherwise.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.atomic import atomic_savefig, atomic_write_text
from ..core.dist import resolve_device
from ..core.errors import ConfigError, DataError
from ..core.likelihood import windows
from ..core.model import build_model
from ..core.model_spec import ModelSpec, check_vocab
from ..core.optim import build_optimizer
from ..core.paths import data_root
from ..data.tokenizer import eos_token_id, load_tokenizer
from .trainer import Hook, SingleRun, StepEvent, Trainer

DEFAULT_DATA = "c4/c4-sample.00000-of-00001.json.gz"  # under data_root()
DEFAULT_TOLERANCE = 0.25

# Recorded modules -> layer type (the plot's lines). Norms, rotary and dropout are left out:
# their outputs are Theta(1) by construction and say nothing about the parameterization.
LAYER_TYPES = [
    (r"transformer\.wte", "embedding"),
    (r"transformer\.blocks\.\d+\.att_proj", "attn_qkv"),
    (r"transformer\.blocks\.\d+\.attn_out", "attn_out"),
    (r"transformer\.blocks\.\d+\.ff_proj", "mlp_in"),
    (r"transformer\.blocks\.\d+\.act", "mlp_act"),
    (r"transformer\.blocks\.\d+\.ff_out", "mlp_out"),
    (r"transformer\.blocks\.\d+", "block"),  # the residual stream after the block
    (r"transformer\.ff_out", "logits"),
]


def layer_type(name: str) -> str | None:
    for pattern, kind in LAYER_TYPES:
        if re.fullmatch(pattern, name):
            return kind
    return None


def read_texts(path: str | os.PathLike):
    """Document texts from a C4 JSON-lines file (``.json``, ``.jsonl``, optionally ``.gz``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: C4 file not found (set data=FILE or $OVERTRAIN_DATA)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{path}:{i}: not a JSON object with a 'text' field") from None


def c4_batch(path, batch_size: int, seq_len: int, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed (input, target) batch of ``batch_size`` windows from the first documents of ``path``,
    tokenized with the model's tokenizer, EOS after every document (the pre-training format)."""
    tok = load_tokenizer(spec.tokenizer)
    check_vocab(spec, tok.get_vocab_size(), str(path), tokenizer=spec.tokenizer)
    eos = eos_token_id(tok)
    need = batch_size * seq_len + 1
    ids: list[int] = []
    for text in read_texts(path):
        ids += tok.encode(text).ids + [eos]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise DataError(f"{path}: only {len(ids)} tokens, need {need} for {batch_size} x {seq_len}")
    w = torch.from_numpy(windows(np.asarray(ids, dtype=np.int64), seq_len)[:batch_size])
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def default_widths(spec: ModelSpec) -> list[int]:
    """base/4 .. 4 x base in powers of two, keeping multiples of head_dim."""
    out = [int(spec.base_d_model * 2.0**k) for k in range(-2, 3)]
    return [w for w in out if w >= spec.head_dim and w % spec.head_dim == 0]


def _recorder(records: list, name: str, **tags):
    def hook(module, inputs, output):
        x = output[0] if isinstance(output, (tuple, list)) else output
        records.append(dict(tags, module=name, l1=x.detach().abs().mean().item()))  # mup's FDICT["l1"]

    return hook


def coord_data(
    spec: ModelSpec,
    widths,
    batch,
    steps: int = 4,
    lr: float = 3e-3,
    seeds: int = 1,
    betas=(0.9, 0.95),
    device: str = "cpu",
    progress: bool = True,
    grad_clip: float = 0.0,
) -> tuple[list[dict], list[dict]]:
    """Train ``spec`` at each width for ``steps`` steps on ``batch``; returns (activation records, losses).

    Each record: {seed, width, t, module, l1}. Losses: {seed, width, t, loss, grad_norm} (at step t;
    the gradient norm before clipping).
    ``grad_clip`` > 0: the global gradient-norm clip of ``train_step``, as pre-training uses it.
    """
    x, y = (b.to(device) for b in batch)
    records: list[dict] = []
    losses: list[dict] = []
    bar = tqdm(
        total=seeds * len(widths) * steps,
        desc=f"coord check ({spec.parametrization})",
        disable=None if progress else True,
    )  # None: off when not a TTY
    for seed in range(seeds):
        for width in widths:
            model = build_model(spec.at_width(width), device=device, seed=seed)
            opt = build_optimizer(model.named_parameters(), lr, betas, eps=1e-8, weight_decay=0.0)
            run = RecordedRun(model, opt, grad_clip or None, records, seed=seed, width=width)
            hook = CoordLosses(losses, bar, seed=seed, width=width)
            # the one loop: a fixed batch at a constant LR, every step whatever the loss ("continue")
            Trainer(run, lambda s: ([(x, y)], 0), [lambda s: 1.0], steps, [hook], "continue", "coord check").run()
            del model, opt, run
    bar.close()
    return records, losses


class RecordedRun(SingleRun):
    """``SingleRun`` in fp32 that records every listed module's mean |output| during the forward
    of step t (1-based) into ``records``, tagged with ``tags`` and t."""

    def __init__(self, model, optimizer, grad_clip: float | None, records: list, **tags):
        super().__init__(model, optimizer, grad_clip, "fp32")
        self.records, self.tags, self.t = records, tags, 0

    def step(self, micro_batches, lr_factors):
        self.t += 1
        handles = [
            m.register_forward_hook(_recorder(self.records, name, **self.tags, t=self.t))
            for name, m in self.model.named_modules()
            if layer_type(name)
        ]
        try:
            return super().step(micro_batches, lr_factors)
        finally:
            for h in handles:
                h.remove()


class CoordLosses(Hook):
    """Each step's loss and grad norm as a losses record ``{**tags, t, loss, grad_norm}``; the bar moves."""

    def __init__(self, losses: list, bar, **tags):
        self.losses, self.bar, self.tags = losses, bar, tags

    def after_step(self, ev: StepEvent) -> None:
        (stats,) = ev.stats
        self.losses.append(dict(self.tags, t=ev.step + 1, loss=stats.loss, grad_norm=stats.grad_norm))
        self.bar.update(1)


def log_slope(widths, values) -> float:
    """Least-squares slope of log(value) vs log(width); +inf when a value is not finite or not positive."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        return math.inf
    return float(np.polyfit(np.log(np.asarray(widths, dtype=np.float64)), np.log(v), 1)[0])


def summarize(records: list[dict], losses: list[dict], widths, steps: int, tolerance: float) -> dict:
    """Per-module and per-type l1 as [step][width] lists (mean over seeds), last-step slopes, verdict."""
    widths = list(widths)
    modules = list(dict.fromkeys(r["module"] for r in records))
    cell: dict[tuple, list] = {}
    for r in records:
        cell.setdefault((r["module"], r["t"], r["width"]), []).append(r["l1"])
    per_module = {m: [[float(np.mean(cell[m, t, w])) for w in widths] for t in range(1, steps + 1)] for m in modules}
    types = list(dict.fromkeys(layer_type(m) for m in modules))
    per_type = {k: np.mean([per_module[m] for m in modules if layer_type(m) == k], axis=0).tolist() for k in types}
    slopes = {m: log_slope(widths, per_module[m][-1]) for m in modules}
    type_slopes = {k: log_slope(widths, per_type[k][-1]) for k in types}
    failing = sorted((m for m, s in slopes.items() if s > tolerance), key=lambda m: -slopes[m])
    lcell: dict[tuple, list] = {}
    for r in losses:
        lcell.setdefault((r["t"], r["width"]), []).append(r["loss"])
    loss = [[float(np.mean(lcell[t, w])) for w in widths] for t in range(1, steps + 1)]
    gcell: dict[tuple, list] = {}
    for r in losses:
        gcell.setdefault((r["t"], r["width"]), []).append(r.get("grad_norm", math.nan))
    grad_norm = [[float(np.mean(gcell[t, w])) for w in widths] for t in range(1, steps + 1)]
    return dict(
        widths=widths,
        steps=steps,
        tolerance=tolerance,
        statistic="l1 = mean |activation| (mup FDICT['l1'])",
        layers={m: dict(type=layer_type(m), l1=per_module[m], slope=slopes[m]) for m in modules},
        types={k: dict(l1=per_type[k], slope=type_slopes[k]) for k in types},
        loss=loss,
        grad_norm=grad_norm,  # [step][width] before clipping: a clip acts where it exceeds grad_clip
        max_slope=max(slopes.values()),
        failing=failing,
        passed=not failing,
    )


def _json_safe(obj):
    """Non-finite floats (a diverged SP run) become null: the file stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def plot(summary: dict, path: str | os.PathLike, title: str) -> None:
    import matplotlib  # heavy: matplotlib, only the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, widths = summary["steps"], summary["widths"]
    fig, axes = plt.subplots(1, steps, figsize=(4 * steps + 1.5, 3.8), sharey=True, squeeze=False)
    for t, ax in enumerate(axes[0]):
        for kind, d in summary["types"].items():
            ax.plot(widths, d["l1"][t], marker="o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"t={t + 1}" + (" (init)" if t == 0 else ""))
        ax.set_xlabel("width (d_model)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean |activation|")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    verdict = "PASS" if summary["passed"] else f"FAIL ({len(summary['failing'])} layers grow)"
    fig.suptitle(f"{title}: max slope {summary['max_slope']:.2f} (tolerance {summary['tolerance']}) {verdict}")
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (4 * steps + 1.5), 1))
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def coord_stem(parametrization: str, grad_clip: float = 0.0) -> str:
    """The output files' name: ``coord_mup``, or ``coord_mup_clip1`` with a gradient clip of 1."""
    return f"coord_{parametrization}" + (f"_clip{grad_clip:g}" if grad_clip else "")


def coord_check(
    spec: ModelSpec,
    out_dir,
    widths=None,
    steps: int = 4,
    lr: float = 3e-3,
    seeds: int = 1,
    batch_size: int = 4,
    seq_len: int = 128,
    data=None,
    tolerance: float = DEFAULT_TOLERANCE,
    device: str = "cpu",
    progress: bool = True,
    grad_clip: float = 0.0,
) -> dict:
    """Run the check, write ``coord_<parametrization>[_clipG].{json,png}`` into ``out_dir``, return the summary."""
    widths = sorted(widths or default_widths(spec))
    bad = [w for w in widths if w <= 0 or w % spec.head_dim]
    if len(widths) < 4 or bad:
        raise ConfigError(f"widths={widths}: need at least 4 positive multiples of head_dim={spec.head_dim}")
    if steps < 1 or seeds < 1 or batch_size < 1 or seq_len < 1:
        raise ConfigError(
            f"steps, seeds, batch_size, seq_len must be >= 1, got {steps}, {seeds}, {batch_size}, {seq_len}"
        )
    data = Path(data) if data else data_root() / DEFAULT_DATA
    seq_len = min(seq_len, spec.max_sequence_length)
    batch = c4_batch(data, batch_size, seq_len, spec)
    if grad_clip < 0:
        raise ConfigError(f"grad_clip={grad_clip} must be >= 0 (0: no clipping)")
    records, losses = coord_data(
        spec, widths, batch, steps, lr, seeds, device=device, progress=progress, grad_clip=grad_clip
    )
    summary = summarize(records, losses, widths, steps, tolerance)
    summary = dict(
        model=spec.name,
        parametrization=spec.parametrization,
        base_d_model=spec.base_d_model,
        lr=lr,
        optimizer="MuAdamW(betas=(0.9, 0.95), weight_decay=0)",
        grad_clip=grad_clip,
        seeds=seeds,
        batch_size=batch_size,
        seq_len=seq_len,
        data=str(data),
        **summary,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = coord_stem(spec.parametrization, grad_clip)
    atomic_write_text(out / f"{stem}.json", json.dumps(_json_safe(summary), indent=1))
    clip = f" grad_clip={grad_clip:g}" if grad_clip else ""
    plot(summary, out / f"{stem}.png", f"{spec.name} {spec.parametrization} lr={lr:g}{clip}")
    return summary


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class CoordCheckOptions:
    out: str = ""  # output directory for coord_<parametrization>.json and .png
    widths: list[int] = field(default_factory=list)  # d_model values, at least 4 (empty: base/4 .. 4 x base)
    steps: int = 4  # optimizer steps per width
    lr: float = 3e-3  # Adam LR at the base width
    seeds: int = 1  # initializations averaged per width
    batch_size: int = 4  # sequences in the one fixed batch
    seq_len: int = 128  # tokens per sequence
    data: str | None = None  # C4 JSON-lines file (None: $OVERTRAIN_DATA/c4/c4-sample.00000-of-00001.json.gz)
    tolerance: float = DEFAULT_TOLERANCE  # max allowed slope of log(scale) vs log(width) at the last step
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    grad_clip: float = 0.0  # global gradient-norm clip per step (pre-training: optim.grad_clip = 1.0); 0: none

    def validate(self) -> None:
        if not self.out:
            raise ValueError("out is not set (the output directory: out=DIR)")


def run(spec: ModelSpec, options: CoordCheckOptions) -> int:
    """``overtrain coord-check MODEL``: the check of ``spec`` (its keys, d_model= etc., change the model)."""
    s = coord_check(
        spec,
        options.out,
        options.widths,
        options.steps,
        options.lr,
        options.seeds,
        options.batch_size,
        options.seq_len,
        options.data,
        options.tolerance,
        str(resolve_device(options.device)),
        grad_clip=options.grad_clip,
    )
    clip = f", grad_clip {s['grad_clip']:g}" if s["grad_clip"] else ""
    print(f"{spec.name} ({spec.parametrization}) widths {s['widths']}, {s['steps']} steps, lr {s['lr']:g}{clip}")
    for kind, d in s["types"].items():
        print(f"  {kind:<10} slope {d['slope']:+.3f}   last-step l1 " + " ".join(f"{v:.3g}" for v in d["l1"][-1]))
    stem = Path(options.out) / coord_stem(spec.parametrization, s["grad_clip"])
    print(f"wrote {stem}.json, {stem}.png")
    if s["passed"]:
        print(f"PASS: every layer's last-step slope <= {s['tolerance']} (max {s['max_slope']:.3f})")
        return 0
    print(
        f"FAIL: {len(s['failing'])} layers grow with width beyond slope {s['tolerance']}: "
        + ", ".join(f"{m} ({s['layers'][m]['slope']:.2f})" for m in s["failing"][:8])
    )
    return 1
