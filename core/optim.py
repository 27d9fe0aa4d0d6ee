"""The one optimizer builder: AdamW with muP's per-group scaling (``mup.MuAdamW``) or plain AdamW.

Two groups before muP splits them: matrices get decoupled weight decay, vectors (norms, biases)
and (unless ``decay_embeddings``) the input embedding ``wte`` get none. ``MuAdamW`` then divides
the LR of hidden matrices by their width multiplier and multiplies their decay by it, so
lr x weight_decay is width-independent; at width_mult 1 (SP, or d_model = base_d_model) it is
AdamW. Each group's ``initial_lr`` is recorded so schedules scale the muP-adjusted LR
(``core.step.set_lr_factor``). Pre-training, fine-tuning, stacked sweeps, SFT and the coordinate
check all build their optimizer here: ``build_optimizer`` from explicit settings, ``optimizer_for``
from a stage's config (pre-training's ``optim``, a ``FinetuneConfig``). ``param_groups`` is the
grouping alone (no optimizer state), so ``group_lrs`` / ``peak_lrs`` name each group's peak LR for
the rows without building a second optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from mup.optim import MuAdam

from .step import remember_initial_lrs


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    weight_decay: float = 0.0,
    mup: bool = True,
    decay_embeddings: bool = False,
) -> list[dict]:
    """The optimizer's parameter groups (``params``, ``lr``, ``weight_decay``), muP-split and
    -scaled by ``mup.MuAdam``'s own grouping when ``mup``; empty groups dropped."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.ndim < 2 or (name.endswith("wte.weight") and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if mup:
        # MuAdamW is MuAdam(impl=AdamW): with impl returning its groups, this is its grouping alone.
        groups = MuAdam(groups, impl=lambda new_groups, **_: new_groups, lr=lr, weight_decay=weight_decay)
    else:
        for g in groups:
            g["lr"] = lr
    return [g for g in groups if g["params"]]


def build_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mup: bool = True,
    decay_embeddings: bool = False,
) -> torch.optim.Optimizer:
    """(Mu)AdamW over ``model.named_parameters()`` (parameters need mup ``infshape``s when ``mup``)."""
    groups = param_groups(named_parameters, lr, weight_decay, mup, decay_embeddings)
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    remember_initial_lrs(opt)
    return opt


def optimizer_for(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """``build_optimizer`` from a stage's config: ``lr``, ``betas``, ``eps``, ``weight_decay``, and
    ``mup`` / ``decay_embeddings`` where it has them (pre-training's ``optim``: MuAdamW; a
    ``FinetuneConfig``: its ``optimizer``)."""
    return build_optimizer(
        model.named_parameters(),
        cfg.lr,
        tuple(cfg.betas),
        cfg.eps,
        cfg.weight_decay,
        getattr(cfg, "mup", True),
        getattr(cfg, "decay_embeddings", False),
    )


def peak_lrs(model: torch.nn.Module, cfg) -> dict:
    """``group_lrs`` of the optimizer ``optimizer_for(model, cfg)`` would build, without building it."""
    groups = param_groups(
        model.named_parameters(),
        cfg.lr,
        cfg.weight_decay,
        getattr(cfg, "mup", True),
        getattr(cfg, "decay_embeddings", False),
    )
    return group_lrs(groups, model.named_parameters())


def group_lrs(
    optimizer: torch.optim.Optimizer | list[dict], named_parameters: Iterable[tuple[str, torch.nn.Parameter]]
) -> dict:
    """Each parameter group's (of an optimizer, or of ``param_groups``) peak LR (``initial_lr``, muP-adjusted), by a short name of what it holds:
    "blocks" (the transformer blocks' matrices; "blocks.vectors": their norms/biases), else the
    parameter's own name without the "transformer." prefix and ".weight" suffix (e.g. "wte",
    "ff_out"); names joined by "+"; a name taken twice gets "#2", "#3"."""

    def short(name: str, p: torch.nn.Parameter) -> str:
        name = re.sub(r"^(transformer\.)|(\.weight)$", "", name)
        if re.match(r"blocks\.\d+\.", name):
            return "blocks" if p.ndim >= 2 else "blocks.vectors"
        return name

    names = {id(p): short(n, p) for n, p in named_parameters}
    out: dict[str, float] = {}
    for g in getattr(optimizer, "param_groups", optimizer):
        label = "+".join(sorted({names.get(id(p), "?") for p in g["params"]}))
        key, i = label, 1
        while key in out:
            i += 1
            key = f"{label}#{i}"
        out[key] = float(g.get("initial_lr", g["lr"]))
    return out
