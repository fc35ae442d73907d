"""Visual-token selection on plain tensors: diversity, merging, pooling and budget splits on known cases."""

import math

import pytest
import torch

from tokenomy._validation import TokenomyError
from tokenomy.budget import split_budget
from tokenomy.select import (
    average_pool,
    bipartite_soft_matching,
    cosine_distance,
    grid_shape,
    k_center,
    merge_into_nearest,
    most_isolated,
)


def at_degrees(*angles: float) -> torch.Tensor:
    """Unit vectors in the plane; their cosine distance grows with the angle between them (up to 180)."""
    rad = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


# Diversity


def test_cosine_distance_known_values():
    x = torch.tensor([[1.0, 0], [0, 2], [3, 3], [-1, 0]], dtype=torch.float64)
    d = cosine_distance(x)
    assert d.dtype == torch.float32 and d.shape == (4, 4)
    assert d.diagonal().tolist() == [0.0] * 4
    assert d[0, 1].item() == 1.0 and d[0, 3].item() == 2.0
    assert d[0, 2].item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert torch.equal(d, d.T) and bool((d >= 0).all())


def test_k_center_farthest_point_traversal_on_an_arc():
    f = at_degrees(0, 10, 20, 35, 60, 90)
    assert k_center(f, 1, first=0).tolist() == [0]
    assert k_center(f, 2, first=0).tolist() == [0, 5]  # 90 degrees is farthest from 0
    assert k_center(f, 3, first=0).tolist() == [0, 3, 5]  # 35 is 35 from 0; 60 is only 30 from 90
    # The starting point is respected and changes the answer.
    assert k_center(f, 3, first=2).tolist() == [2, 4, 5]  # from 20: 90 (70 away), then 60 (30 from 90)
    assert k_center(f, 6, first=4).tolist() == [0, 1, 2, 3, 4, 5]


def test_k_center_square_corners_ties_go_to_lowest_index():
    f = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1], [1, 0.1]])  # corners of a square, exact distances
    assert k_center(f, 2, first=0).tolist() == [0, 2]  # the opposite corner
    assert k_center(f, 3, first=0).tolist() == [0, 1, 2]  # corners 1 and 3 tie at distance 1
    assert k_center(f, 4, first=0).tolist() == [0, 1, 2, 3]  # the near-duplicate of corner 0 comes last
    basis = torch.eye(4)  # all pairwise distances exactly 1
    assert k_center(basis, 3, first=3).tolist() == [0, 1, 3]


def test_k_center_never_repeats_duplicates():
    f = torch.tensor([[1.0, 0], [1, 0], [1, 0]])
    assert k_center(f, 3, first=1).tolist() == [0, 1, 2]
    assert k_center(f, 2, first=2).tolist() == [0, 2]


def test_k_center_from_several_starting_points():
    f = at_degrees(0, 10, 20, 35, 60, 90)
    assert k_center(f, 3, first=[0, 5]).tolist() == [0, 3, 5]  # 35 is 35 from 0; 60 only 30 from 90
    assert k_center(f, 4, first=[1, 4]).tolist() == [1, 3, 4, 5]  # 90 (30 from 60), then 35 (25 from both)
    assert k_center(f, 2, first=[4, 2]).tolist() == [2, 4]  # as many starts as k: the starts only
    assert k_center(f, 2, first=[0]).tolist() == k_center(f, 2, first=0).tolist()


@pytest.mark.parametrize("k, first", [(0, 0), (5, 0), (-1, 0), (2.0, 0), (True, 0), (2, 4), (2, -1), (2, True),
                                      (2, []), (2, [0, 0]), (2, [0, 1, 2]), (2, [0, 4]), (2, [0.0])])
def test_k_center_rejects_bad_arguments(k, first):
    with pytest.raises(TokenomyError):
        k_center(torch.eye(4), k, first)


def test_most_isolated_finds_the_outlier():
    cluster = torch.tensor([[1.0, 0.0], [1, 0.05], [1, -0.05], [0, 1]])
    assert most_isolated(cluster) == 3
    assert most_isolated(cluster.flip(0)) == 0
    assert most_isolated(torch.tensor([[0.3, 0.4]])) == 0
    # DivPrune: farthest-point traversal from the most isolated point.
    f = at_degrees(0, 5, 10, 80, 85, 170)
    start = most_isolated(f)
    assert start == 5
    assert k_center(f, 2, first=start).tolist() == [0, 5]
    with pytest.raises(TokenomyError):
        most_isolated(torch.zeros(0, 2))
    with pytest.raises(TokenomyError):
        most_isolated(torch.zeros(3))


# Merging


def basis(*axes: int, d: int = 3) -> torch.Tensor:
    return torch.eye(d)[list(axes)]


def test_bipartite_identical_tokens_merge_with_size_weighted_mean():
    metric = basis(0, 1, 1, 2).unsqueeze(0)  # A = {0, 2}, B = {1, 3}; token 2 equals token 1
    merge = bipartite_soft_matching(metric, r=1)
    x = torch.tensor([[[1.0, 10], [2, 20], [6, 60], [7, 70]]])
    size = torch.tensor([[[1.0], [1], [3], [2]]])
    x_out, size_out, slot = merge(x, size)
    assert slot.tolist() == [[0, 1, 1, 2]]
    assert size_out.tolist() == [[[1.0], [4.0], [2.0]]]
    assert x_out.tolist() == [[[1.0, 10], [5, 50], [7, 70]]]  # (2 * 1 + 6 * 3) / 4 = 5


def test_bipartite_orders_by_smallest_original_index_and_batches():
    metric = torch.stack([basis(0, 1, 1, 2), basis(0, 1, 2, 0)])  # row 1: token 0 equals token 3
    x = torch.arange(8.0).reshape(2, 4, 1)
    x_out, size_out, slot = bipartite_soft_matching(metric, r=1)(x, torch.ones(2, 4, 1))
    assert slot.tolist() == [[0, 1, 1, 2], [0, 1, 2, 0]]  # {0, 3} comes first: it holds token 0
    assert x_out[:, :, 0].tolist() == [[0.0, 1.5, 3.0], [5.5, 5.0, 6.0]]
    assert size_out[:, :, 0].tolist() == [[1.0, 2.0, 1.0], [2.0, 1.0, 1.0]]


def test_bipartite_protected_tokens_are_untouched():
    metric = basis(1, 1, 1, 0, 2).unsqueeze(0)  # [CLS] equals tokens 1 and 2 but must stay alone
    x = torch.tensor([[[3.0], [1], [2], [4], [5]]])
    x_out, size_out, slot = bipartite_soft_matching(metric, r=1, protected=1)(x, torch.ones(1, 5, 1))
    assert slot.tolist() == [[0, 1, 1, 2, 3]]
    assert x_out[0, :, 0].tolist() == [3.0, 1.5, 4.0, 5.0]
    assert size_out[0, :, 0].tolist() == [1.0, 2.0, 1.0, 1.0]


def test_bipartite_clamps_r_to_set_a():
    metric = basis(1, 1, 1, 0, 2).unsqueeze(0)  # A = {1, 3}, B = {2, 4}: both A tokens go to token 2
    merge = bipartite_soft_matching(metric, r=10, protected=1)
    x_out, size_out, slot = merge(torch.ones(1, 5, 2), torch.ones(1, 5, 1))
    assert x_out.shape == (1, 3, 2)
    assert slot.tolist() == [[0, 1, 1, 1, 2]]
    assert size_out[0, :, 0].tolist() == [1.0, 3.0, 1.0]
    # B empty (one unprotected token): nothing can merge.
    merge = bipartite_soft_matching(torch.ones(1, 2, 3), r=1, protected=1)
    x_out, _, slot = merge(torch.ones(1, 2, 1), torch.ones(1, 2, 1))
    assert x_out.shape == (1, 2, 1) and slot.tolist() == [[0, 1]]


def test_bipartite_r_zero_is_identity():
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    x_out, size_out, slot = bipartite_soft_matching(x, r=0)(x, torch.ones(2, 5, 1))
    assert torch.equal(x_out, x) and torch.equal(slot, torch.arange(5).expand(2, 5))
    assert size_out.tolist() == torch.ones(2, 5, 1).tolist()


def test_bipartite_slot_carries_any_per_token_quantity():
    g = torch.Generator().manual_seed(1)
    b, n, r, protected = 3, 11, 4, 1
    metric = torch.randn(b, n, 6, generator=g)
    x = torch.randn(b, n, 5, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (b, n, 1), generator=g).double()
    x_out, size_out, slot = bipartite_soft_matching(metric, r, protected)(x, size)
    assert x_out.shape == (b, n - r, 5) and size_out.shape == (b, n - r, 1) and slot.dtype == torch.long
    assert torch.equal(slot[:, :protected], torch.arange(protected).expand(b, protected))
    for row in range(b):
        assert sorted(set(slot[row].tolist())) == list(range(n - r))
        members = [(slot[row] == o).nonzero()[:, 0] for o in range(n - r)]
        # Spatial order: outputs sorted by the smallest original index they contain.
        firsts = [int(m.min()) for m in members]
        assert firsts == sorted(firsts)
        for o, m in enumerate(members):
            w = size[row, m]
            assert torch.allclose(x_out[row, o], (x[row, m] * w).sum(0) / w.sum())
            assert size_out[row, o, 0].item() == w.sum().item()
    # Original positions follow along through the slot (and a second merge call gives the same plan).
    positions = torch.arange(n, dtype=torch.float64).expand(b, n).unsqueeze(-1)
    mean_pos, _, slot2 = bipartite_soft_matching(metric, r, protected)(positions, torch.ones(b, n, 1))
    assert torch.equal(slot2, slot)
    counts = torch.zeros(b, n - r).scatter_add_(1, slot, torch.ones(b, n))
    sums = torch.zeros(b, n - r, dtype=torch.float64).scatter_add_(1, slot, positions[..., 0])
    assert torch.allclose(mean_pos[..., 0], sums / counts)


def test_bipartite_rejects_bad_arguments():
    with pytest.raises(TokenomyError):
        bipartite_soft_matching(torch.ones(4, 3), r=1)
    with pytest.raises(TokenomyError):
        bipartite_soft_matching(torch.ones(1, 4, 3), r=-1)
    with pytest.raises(TokenomyError):
        bipartite_soft_matching(torch.ones(1, 4, 3), r=1, protected=5)
    merge = bipartite_soft_matching(torch.ones(1, 4, 3), r=1)
    with pytest.raises(TokenomyError):
        merge(torch.ones(1, 5, 2), torch.ones(1, 5, 1))
    with pytest.raises(TokenomyError):
        merge(torch.ones(1, 4, 2), torch.ones(1, 4))


def test_merge_into_nearest_hand_computed():
    x = torch.tensor([[1.0], [2], [4], [8], [16]])
    metric = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1], [1, -0.1]])
    kept = torch.tensor([1, 0])  # output follows this order
    # Tokens 2 and 4 join token 0; token 3 joins token 1.
    assert merge_into_nearest(x, kept, metric).tolist() == [[5.0], [7.0]]
    size = torch.tensor([1.0, 1, 2, 1, 1])
    assert merge_into_nearest(x, kept, metric, size).tolist() == [[5.0], [6.25]]  # (1 + 2 * 4 + 16) / 4
    assert merge_into_nearest(x, torch.tensor([0, 1, 2, 3, 4]), metric).tolist() == x.tolist()


@pytest.mark.parametrize("kept", [[0, 0], [5], [-1], []])
def test_merge_into_nearest_rejects_bad_kept(kept):
    with pytest.raises(TokenomyError):
        merge_into_nearest(torch.ones(5, 2), torch.tensor(kept, dtype=torch.long), torch.ones(5, 3))


# Pooling


@pytest.mark.parametrize(
    "k, h, w, expected",
    [
        (9, 6, 6, (3, 3)),
        (6, 6, 6, (3, 2)),  # 3x2 and 2x3 are equally far from square; the larger gh wins
        (7, 6, 6, None),
        (37, 6, 6, None),
        (8, 4, 8, (2, 4)),
        (12, 3, 4, (3, 4)),
        (4, 1, 8, (1, 4)),
        (1, 5, 7, (1, 1)),
    ],
)
def test_grid_shape(k, h, w, expected):
    assert grid_shape(k, h, w) == expected


def test_grid_shape_rejects_bad_arguments():
    with pytest.raises(TokenomyError):
        grid_shape(0, 6, 6)
    with pytest.raises(TokenomyError):
        grid_shape(4, 0, 6)


def test_average_pool_means_of_blocks():
    grid = torch.arange(16.0)
    x = torch.stack([grid, -2 * grid], dim=1)  # (16, 2) in raster order over 4 x 4
    out = average_pool(x, 4, 4, 4)
    assert out.tolist() == [[2.5, -5.0], [4.5, -9.0], [10.5, -21.0], [12.5, -25.0]]
    assert average_pool(torch.arange(8.0).unsqueeze(1), 2, 2, 4).tolist() == [[2.5], [4.5]]
    assert average_pool(x, 1, 4, 4).tolist() == [[7.5, -15.0]]
    assert torch.equal(average_pool(x, 16, 4, 4), x)


def test_average_pool_falls_back_to_raster_order():
    x = torch.tensor([[1.0], [2], [4], [8], [16], [32]])  # 2 x 3 grid; k = 5 has no fitting grid
    assert grid_shape(5, 2, 3) is None
    assert average_pool(x, 5, 2, 3).tolist() == [[1.5], [3.0], [6.0], [12.0], [24.0]]


@pytest.mark.parametrize("k, shape", [(0, (16, 2)), (17, (16, 2)), (4, (15, 2)), (4, (16,))])
def test_average_pool_rejects_bad_arguments(k, shape):
    with pytest.raises(TokenomyError):
        average_pool(torch.ones(shape), k, 4, 4)


# Budget splits


@pytest.mark.parametrize(
    "total, weights, capacity, expected",
    [
        (10, [1, 1, 1], [9, 9, 9], [4, 3, 3]),  # even, remainder to the first group
        (11, [2, 2, 2, 2], [9, 9, 9, 9], [3, 3, 3, 2]),
        (20, [1, 2, 3, 4], [20, 20, 20, 20], [2, 4, 6, 8]),
        (7, [1, 2, 3, 4], [20, 20, 20, 20], [1, 1, 2, 3]),  # quotas .7 1.4 2.1 2.8: largest remainders win
        (10, [1, 1, 1], [2, 10, 10], [2, 4, 4]),  # the capped group's excess is shared out
        (10, [6, 3, 1], [2, 4, 20], [2, 4, 4]),  # capping cascades over two rounds
        (9, [4, 2, 1, 1], [1, 2, 10, 10], [1, 2, 3, 3]),
        (5, [0, 0], [5, 5], [3, 2]),  # all-zero weights count as equal
        (4, [1, 0, 0], [1, 5, 5], [1, 2, 1]),  # the open groups weigh 0 after capping: equal among them
        (3, [1, 1], [0, 5], [0, 3]),
        (6, [1, 1, 1], [1, 2, 3], [1, 2, 3]),  # total == capacity
        (0, [1, 2], [3, 3], [0, 0]),
    ],
)
def test_split_budget_known_cases(total, weights, capacity, expected):
    counts = split_budget(total, torch.tensor(weights, dtype=torch.float32), torch.tensor(capacity))
    assert counts.dtype == torch.long
    assert counts.tolist() == expected


def test_split_budget_sums_exactly_within_capacity():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        c = int(torch.randint(1, 7, (1,), generator=g))
        capacity = torch.randint(0, 12, (c,), generator=g)
        weights = torch.rand(c, generator=g) * (torch.rand(c, generator=g) > 0.3)
        total = int(torch.randint(0, int(capacity.sum()) + 1, (1,), generator=g))
        counts = split_budget(total, weights, capacity)
        assert int(counts.sum()) == total
        assert bool((counts >= 0).all()) and bool((counts <= capacity).all())


@pytest.mark.parametrize(
    "total, weights, capacity",
    [
        (-1, [1.0, 1.0], [3, 3]),
        (7, [1.0, 1.0], [3, 3]),
        (2, [1.0, -1.0], [3, 3]),
        (2, [1.0, float("nan")], [3, 3]),
        (2, [1.0, 1.0], [3, -3]),
        (2, [1.0, 1.0], [3.0, 3.0]),
        (2, [1.0, 1.0], [3, 3, 3]),
        (2.0, [1.0, 1.0], [3, 3]),
    ],
)
def test_split_budget_rejects_bad_arguments(total, weights, capacity):
    with pytest.raises(TokenomyError):
        split_budget(total, torch.tensor(weights), torch.tensor(capacity))
