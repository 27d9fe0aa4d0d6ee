"""The one evaluation core: per-token log-likelihoods of targets under a model.

Every perplexity in overtrain (C4 validation during pre-training, C4 before/after fine-tuning,
ID perplexity of LM tasks, class scores of classification tasks) goes through
``token_logprobs``; the metrics only differ in which tokens count and how they are pooled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from .dist import reshard
from .model import unwrap


def autocast_for(device: torch.device | str, precision: str = "auto"):
    """bf16 autocast on CUDA (unless precision='fp32'); plain fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def readout_at(model, mask: torch.Tensor):
    """Inside, ``model(x).logits`` is (1, mask.sum(), V): the readout sees only positions where ``mask``.

    The vocabulary-sized readout and softmax are most of a small model's compute; prompts and
    padding need neither. A forward pre-hook on ``transformer.ff_out`` gathers the hidden states
    (works under DDP and torch.compile wrappers); values at the kept positions are unchanged.
    """
    hook = unwrap(model).transformer.ff_out.register_forward_pre_hook(lambda _, args: (args[0][mask].unsqueeze(0),))
    try:
        yield
    finally:
        hook.remove()


def token_logprobs(
    model, input_ids: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None
) -> torch.Tensor:
    """log p(targets[b, t] | input_ids[b, :t+1]) as float32, shape (B, T).

    ``targets`` may hold -100 (ignored positions); their log-prob is returned as 0 (and their
    logits are never computed, see ``readout_at``).
    ``vocab_size`` masks the padded embedding rows out of the softmax (ids >= vocab_size never
    occur in data, so they should get no probability mass at evaluation).
    """
    mask = targets >= 0
    with readout_at(model, mask) if not bool(mask.all()) else nullcontext():
        logits = model(input_ids).logits.float()
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits[..., :vocab_size]
    logp = torch.log_softmax(logits, dim=-1)
    if logits.shape[:2] != targets.shape:  # gathered: (1, N, V) for the N kept positions
        out = torch.zeros(targets.shape, dtype=torch.float32, device=logp.device)
        out[mask] = logp[0].gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
        return out
    safe = targets.clamp(min=0)
    out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return out.masked_fill(targets < 0, 0.0)


def lm_loss(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss: (sum of token cross-entropies, number of target tokens). -100 is ignored.

    Returns the *sum* so that callers can normalize by the global token count (exact under
    gradient accumulation and data parallelism, whatever the per-micro-batch masks).
    """
    logits = model(input_ids).logits
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, (targets >= 0).sum()


def windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
    """Non-overlapping evaluation windows of ``seq_len + 1`` tokens (stride seq_len) as int64 (N, seq_len+1).

    Window i covers tokens[i*seq_len : i*seq_len + seq_len + 1]; every token after the first is
    predicted exactly once. ``max_tokens`` caps the number of predicted tokens (a fixed prefix).
    """
    n = (len(tokens) - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    if n <= 0:
        raise ValueError(f"need at least {seq_len + 1} tokens for one window, have {len(tokens)}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(tokens[idx], dtype=np.int64)


def _sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule  # heavy: torch.distributed.fsdp (~2 s), only sharded runs

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


@torch.no_grad()
def perplexity(
    model,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: torch.device | str | None = None,
    precision: str = "auto",
    vocab_size: int | None = None,
    distributed: bool = False,
    per_window: bool = False,
) -> dict:
    """LM perplexity on a flat token array: exp(mean NLL over every predicted token).

    Deterministic (fixed windows, fixed order). With ``distributed`` the windows are split over
    ranks and the sums all-reduced, so every rank returns the same value (an FSDP-sharded model
    runs as many forwards on every rank, a rank with fewer windows discarding its extra ones).
    ``per_window`` adds ``window_nll``: each window's summed NLL (float64, this rank's windows; each
    predicts seq_len tokens), for intervals over windows; loss and ppl are unchanged by it.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    win = windows(tokens, seq_len, max_tokens)
    rank, world = 0, 1
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mine = win[rank::world]
    nll = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    per = []
    n_batches = math.ceil(len(mine) / batch_size)
    if world > 1 and _sharded(model):  # every forward is a collective: all ranks run as many (extra ones discarded)
        n_batches = math.ceil(math.ceil(len(win) / world) / batch_size)
    with autocast_for(device, precision):
        for b in range(n_batches):
            start = b * batch_size
            if start >= len(mine):
                token_logprobs(
                    model, torch.from_numpy(win[:1, :-1]).to(device), torch.from_numpy(win[:1, 1:]).to(device)
                )
                continue
            chunk = torch.from_numpy(mine[start : start + batch_size]).to(device)
            lp = token_logprobs(model, chunk[:, :-1], chunk[:, 1:], vocab_size)
            nll -= lp.double().sum()
            count += lp.numel()
            if per_window:
                per.append(-lp.double().sum(1))
    if world > 1:
        torch.distributed.all_reduce(nll)
        torch.distributed.all_reduce(count)
    if _sharded(model):  # fsdp.reshard_after_forward false: no backward frees what these forwards gathered
        reshard(model)
    model.train(was_training)
    mean = (nll / count).item()
    out = {"loss": mean, "ppl": math.exp(mean) if mean < 709.0 else math.inf, "tokens": int(count.item())}
    if per_window:
        out["window_nll"] = torch.cat(per).cpu().numpy() if per else np.zeros(0)
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            out[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
        else:
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@torch.no_grad()
def continuation_logprobs(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    device: torch.device | str | None = None,
    precision: str = "auto",
    vocab_size: int | None = None,
    pad_id: int = 1,
) -> list[np.ndarray]:
    """Per-token log p(continuation | context) for each (context_ids, continuation_ids) pair.

    Batched and length-bucketed (pairs sorted by length, results returned in input order);
    right padding with causal attention leaves real positions untouched, so results equal a
    one-pair-at-a-time loop. Callers truncate contexts to the model's context length first.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out: list[np.ndarray | None] = [None] * len(pairs)
    with autocast_for(device, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in idx]
            inputs = pad_batch([s[:-1] for s in seqs], pad_id).to(device)
            targets = torch.full_like(inputs, -100)
            for row, i in enumerate(idx):
                ctx, cont = len(pairs[i][0]), len(pairs[i][1])
                full = seqs[row]
                targets[row, ctx - 1 : ctx - 1 + cont] = torch.as_tensor(full[ctx : ctx + cont])
            lp = token_logprobs(model, inputs, targets, vocab_size).cpu().numpy()
            for row, i in enumerate(idx):
                ctx, cont = len(pairs[i][0]), len(pairs[i][1])
                out[i] = lp[row, ctx - 1 : ctx - 1 + cont].astype(np.float64)
    model.train(was_training)
    return out  # type: ignore[return-value]


def batched(items: Iterable, n: int) -> Iterator[list]:
    buf = []
    for x in items:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
