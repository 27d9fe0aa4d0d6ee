"""A plain-PyTorch GPT of the same shape as an overtrain model: the throughput baseline.

nanoGPT-style, written for speed and nothing else: fused QKV, ``F.scaled_dot_product_attention``
(causal), RoPE, SwiGLU, LayerNorm without affine, no biases, untied embedding and readout, no muP
multipliers, fused AdamW. Same parameter shapes as ``overtrain.core.model.build_model(spec)``
(checked by ``check_same_shape``), so the same FLOPs per token: a speed ratio against it is the
cost of the OLMo/muP/``train_step`` path, not of a different model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from overtrain.core.likelihood import autocast_for


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim), the rotate-half layout
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, hidden: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.ff_in = nn.Linear(d_model, 2 * hidden, bias=False)  # value and gate halves
        self.ff_out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = F.layer_norm(x, (C,))
        q, k, v = self.qkv(h).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, T, C))
        value, gate = self.ff_in(F.layer_norm(x, (C,))).chunk(2, dim=-1)
        return x + self.ff_out(F.silu(gate) * value)


class GPT(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        hidden: int,
        vocab: int,
        context: int,
        rope_theta: float = 10_000,
    ):
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, hidden) for _ in range(n_layers))
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        cos, sin = rope_tables(context, d_model // n_heads, rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(F.layer_norm(x, (x.shape[-1],)))


def from_spec(spec, device="cpu") -> GPT:
    """The baseline of the same shape as ``build_model(spec)`` (a ``ModelSpec``)."""
    # OLMo's SwiGLU: ff_proj is mlp_ratio x d_model wide, half of it gates.
    hidden = spec.mlp_ratio * spec.d_model // 2
    return GPT(
        spec.d_model,
        spec.n_layers,
        spec.n_heads,
        hidden,
        spec.embedding_size,
        spec.max_sequence_length,
        spec.rope_theta,
    ).to(device)


def check_same_shape(gpt: GPT, olmo) -> None:
    """Raise unless both models have the same multiset of parameter shapes."""
    a = sorted(tuple(p.shape) for p in gpt.parameters())
    b = sorted(tuple(p.shape) for p in olmo.parameters())
    if a != b:
        raise AssertionError(f"baseline shapes {a} differ from the overtrain model's {b}")


def make_optimizer(model: GPT, lr: float = 3e-4, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one, decay on matrices except the embedding."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("wte")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.startswith("wte"))]
    fused = next(model.parameters()).device.type in _get_fused_kernels_supported_devices()
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=fused,
    )


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one micro-batch over fp32 logits, as nanoGPT (compiled whole with the
    model for the ``model+loss`` rows of benchmarks/pretrain_throughput.py)."""
    logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def train_step(
    model, optimizer, micro_batches, precision: str = "auto", grad_clip: float = 1.0, loss_fn=None
) -> torch.Tensor:
    """One step over micro-batches (mean loss per micro-batch, as nanoGPT); returns the loss on the
    device (no host sync). ``loss_fn(model, x, y)`` defaults to ``lm_loss``."""
    loss_fn = loss_fn or lm_loss
    device = micro_batches[0][0].device
    total = torch.zeros((), device=device)
    for x, y in micro_batches:
        with autocast_for(device, precision):
            loss = loss_fn(model, x, y) / len(micro_batches)
        loss.backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
