"""Deterministic training batches from a flat token array, addressed by step.

The array is one file's memmap or a split of many parts (``overtrain.data.c4.parts.PartTokens``:
the parts concatenated in manifest order, so token t has one global index whatever the parts);
either way only ``len`` and slices are used, and a dataset of one part gives exactly the windows
of the single-file layout. A window may span two parts (as it spans two documents).

Window i is ``tokens[i*L : i*L + L + 1]`` (stride L = seq_len; input w[:-1], target w[1:]), so
there are ``n_windows = (len(tokens) - 1) // L`` of them. The order is a function of the seed
only: global sample g belongs to epoch ``e = g // n_windows`` and is window
``perm_e[g % n_windows]`` where ``perm_e = np.random.default_rng([seed, e]).permutation(n_windows)``.

Step s consumes global samples ``[s*B, (s+1)*B)`` (B = global batch in sequences); rank r of W
takes the contiguous share ``[s*B + r*B/W, s*B + (r+1)*B/W)``, cut into micro-batches. The data
position is therefore just the step: resume is exact, and W ranks together see exactly the
global batch one rank would.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """``np.random.default_rng([seed, epoch]).permutation(n)``, in uint32 when it fits.

    ``Generator.permutation(n)`` is ``shuffle(arange(n))``; shuffling a uint32 arange draws the
    same random numbers, so the order is identical at half the memory (C4 has ~1.5e8 windows).
    """
    rng = np.random.default_rng([seed, epoch])
    perm = np.arange(n, dtype=np.uint32 if n < 2**32 else np.int64)
    rng.shuffle(perm)
    return perm


class WindowLoader:
    def __init__(
        self,
        tokens,  # np.ndarray, np.memmap or PartTokens: a flat token sequence
        seq_len: int,
        global_batch: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        source: str = "data",
    ):
        if global_batch % (world_size * micro_batch):
            raise ValueError(
                f"global_batch_size={global_batch} is not divisible by world_size x micro_batch_size "
                f"= {world_size} x {micro_batch}"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{source}: {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
        self._perms: dict[int, np.ndarray] = {}

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def epochs_for(self, steps: int) -> float:
        """Passes over the corpus that ``steps`` steps make (> 1 means repeated data)."""
        return steps * self.global_batch / self.n_windows

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            # Keep at most the epochs of the current step (a step may straddle a boundary).
            for old in [e for e in self._perms if e < epoch - 1]:
                del self._perms[old]
            self._perms[epoch] = epoch_permutation(self.seed, epoch, self.n_windows)
        return self._perms[epoch]

    def window_indices(self, samples: np.ndarray) -> np.ndarray:
        """Window index of each global sample number."""
        samples = np.asarray(samples, dtype=np.int64)
        epochs = samples // self.n_windows
        out = np.empty_like(samples)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[samples[sel] % self.n_windows]
        return out

    def rank_samples(self, step: int) -> np.ndarray:
        start = step * self.global_batch + self.rank * self.per_rank
        return np.arange(start, start + self.per_rank, dtype=np.int64)

    def read(self, windows: np.ndarray) -> np.ndarray:
        """(len(windows), L+1) int64 token rows; one contiguous slice per window."""
        L = self.seq_len
        return np.stack([np.asarray(self.tokens[i * L : i * L + L + 1], dtype=np.int64) for i in windows])

    def micro_batches(self, step: int, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of step ``step`` as [(input_ids, targets), ...] on ``device``."""
        rows = torch.from_numpy(self.read(self.window_indices(self.rank_samples(step))))
        device = torch.device(device)
        if device.type == "cuda":
            rows = rows.pin_memory().to(device, non_blocking=True)
        out = []
        for chunk in rows.split(self.micro_batch):
            out.append((chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()))
        return out


class Prefetcher:
    """Builds step s+1's micro-batches on a background thread while step s trains.

    Batches are a pure function of the step, so prefetching changes no result (resume and DDP
    equality tests run through it); it hides the memmap gather and host-to-device copy.
    """

    def __init__(self, loader: WindowLoader, stop: int, device: torch.device | str):
        self.loader, self.stop, self.device = loader, stop, torch.device(device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._pending: dict[int, object] = {}

    def _submit(self, step: int):
        return self._pool.submit(self.loader.micro_batches, step, self.device)

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        future = self._pending.pop(step, None) or self._submit(step)
        self._pending.clear()  # a non-consecutive request (never in the loop) drops stale work
        if step + 1 < self.stop:
            self._pending[step + 1] = self._submit(step + 1)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
