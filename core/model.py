"""OLMo models from ``ai2-olmo``, muP-parameterized with ``mup``.

``ModelSpec`` (configs/models/*.yaml; ``core.model_spec``, which counts parameters and FLOPs without
torch) describes one model; ``build_model(spec)`` returns an
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

"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from mup import MuReadout, get_shapes, make_base_shapes, set_base_shapes

from .model_spec import ModelSpec


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
