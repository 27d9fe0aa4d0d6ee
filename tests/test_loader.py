"""Training batches: windows, seed-only order, disjoint rank shares, reshuffled epochs."""

import numpy as np
import pytest
import torch
from overtrain.data.loader import Prefetcher, WindowLoader, epoch_permutation

L = 8


def corpus(n_tokens=8 * 37 + 1):
    # Token value = its position (mod 2^16), so each row says where it came from.
    return (np.arange(n_tokens) % 65536).astype(np.uint16)


def rows_of(loader, step):
    return torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in loader.micro_batches(step)])


def window_ids(rows):
    return [int(r[0]) // L for r in rows]


def test_windows_are_stride_L_with_one_token_overlap():
    tokens = corpus()
    ld = WindowLoader(tokens, L, global_batch=4, micro_batch=2, seed=0)
    assert ld.n_windows == 37
    for x, y in ld.micro_batches(0):
        assert x.shape == y.shape == (2, L) and x.dtype == torch.int64
        for xi, yi in zip(x, y):
            i = int(xi[0]) // L
            np.testing.assert_array_equal(xi.numpy(), tokens[i * L : i * L + L])
            np.testing.assert_array_equal(yi.numpy(), tokens[i * L + 1 : i * L + L + 1])


def test_permutation_matches_numpy_definition():
    for seed, epoch, n in [(0, 0, 37), (3, 5, 1000), (12345, 1, 7)]:
        np.testing.assert_array_equal(
            epoch_permutation(seed, epoch, n), np.random.default_rng([seed, epoch]).permutation(n)
        )


def test_order_depends_on_seed_only():
    a = WindowLoader(corpus(), L, 4, 2, seed=1)
    b = WindowLoader(corpus(), L, 4, 4, seed=1)  # micro-batching does not change the order
    c = WindowLoader(corpus(), L, 4, 2, seed=2)
    for step in (0, 5, 20):
        assert torch.equal(rows_of(a, step), rows_of(b, step))
    assert any(not torch.equal(rows_of(a, s), rows_of(c, s)) for s in range(3))
    # Random access equals sequential access (resume = start at a step).
    fresh = WindowLoader(corpus(), L, 4, 2, seed=1)
    assert torch.equal(rows_of(fresh, 20), rows_of(a, 20))


def test_epochs_cover_every_window_once_and_are_reshuffled():
    ld = WindowLoader(corpus(), L, global_batch=4, micro_batch=4, seed=0)  # 37 windows: steps straddle epochs
    steps = 37  # 148 samples = 4 epochs exactly
    seen = [w for s in range(steps) for w in window_ids(rows_of(ld, s))]
    epochs = [seen[e * 37 : (e + 1) * 37] for e in range(4)]
    for e, ids in enumerate(epochs):
        assert sorted(ids) == list(range(37)), e
        assert ids == list(epoch_permutation(0, e, 37))
    assert epochs[0] != epochs[1]
    assert ld.epochs_for(steps) == pytest.approx(4.0)


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_take_disjoint_contiguous_shares_of_the_global_batch(world):
    tokens = corpus()
    one = WindowLoader(tokens, L, global_batch=8, micro_batch=2, seed=7)
    ranks = [
        WindowLoader(tokens, L, global_batch=8, micro_batch=2, seed=7, rank=r, world_size=world) for r in range(world)
    ]
    for step in (0, 3, 9):
        parts = [rows_of(r, step) for r in ranks]
        assert all(len(p) == 8 // world for p in parts)
        assert torch.equal(torch.cat(parts), rows_of(one, step))
        ids = [set(window_ids(p)) for p in parts]
        assert all(not (ids[i] & ids[j]) for i in range(world) for j in range(i + 1, world))


def test_bad_batch_shapes_are_errors():
    with pytest.raises(ValueError, match="not divisible by world_size x micro_batch_size = 2 x 3"):
        WindowLoader(corpus(), L, global_batch=8, micro_batch=3, seed=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than one window"):
        WindowLoader(corpus(L), L, global_batch=1, micro_batch=1, seed=0)


def test_prefetcher_yields_exactly_the_loaders_batches():
    tokens = np.arange(5000, dtype=np.uint16)
    loader = WindowLoader(tokens, 16, 8, 4, seed=3)
    pre = Prefetcher(loader, stop=6, device="cpu")
    try:
        for step in [0, 1, 2, 4, 5]:  # consecutive, then a jump (as after a resume)
            got, want = pre.micro_batches(step), loader.micro_batches(step)
            assert len(got) == len(want) == 2
            for (gx, gy), (wx, wy) in zip(got, want):
                assert torch.equal(gx, wx) and torch.equal(gy, wy)
    finally:
        pre.close()


@pytest.mark.parametrize("world", [1, 2])
def test_parts_give_the_batches_of_their_concatenation(tmp_path, world):
    """A dataset of many parts reads as one flat array (global index): same batches at any world size."""
    from overtrain.data.c4.parts import PartTokens

    tokens = corpus()
    cuts = [0, 50, 51, 200, len(tokens)]
    paths = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"part-{k:05d}.npy")
        tokens[a:b].tofile(paths[-1])
    parts = PartTokens(paths, "uint16", [b - a for a, b in zip(cuts, cuts[1:])])
    flat = WindowLoader(tokens, L, global_batch=8, micro_batch=2, seed=5)
    ranks = [WindowLoader(parts, L, 8, 2, seed=5, rank=r, world_size=world) for r in range(world)]
    assert ranks[0].n_windows == flat.n_windows == 37
    for step in (0, 4, 9, 30):  # 30: past the first epoch
        assert torch.equal(torch.cat([rows_of(r, step) for r in ranks]), rows_of(flat, step))
