"""Documents -> token ids for prepared C4: the ``Encoder`` (texts -> one flat array, EOS after every
document) and ``ValCopies`` (16-byte blake2b digests of validation documents, so that training
copies of them are dropped).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from ..tokenizer import eos_token_id, load_tokenizer


class Encoder:
    """Texts -> one flat array: each document's ids (no special tokens) followed by EOS."""

    def __init__(self, tokenizer: str, dtype: str):
        self.tok = load_tokenizer(tokenizer)
        self.eos = eos_token_id(self.tok)
        self.dtype = np.dtype(dtype)
        # encode_batch_fast skips char offsets we do not need; same ids as encode_batch
        self.encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def __call__(self, texts: list[str]) -> np.ndarray:
        ids = [e.ids for e in self.encode(texts, add_special_tokens=False)]
        for doc in ids:
            doc.append(self.eos)
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=sum(map(len, ids)))


class ValCopies:
    """Remembers validation documents (16-byte digests) and drops exact copies from training."""

    def __init__(self):
        self.digests: set[bytes] = set()
        self.dropped = 0

    @staticmethod
    def digest(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def remember(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            self.digests.add(self.digest(text))
            yield text

    def drop_copies(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            if self.digest(text) in self.digests:
                self.dropped += 1
                continue
            yield text
