"""Selection and budgets on plain tensors: known small cases and exact counts."""

import pytest
import torch

from tokenomy._validation import TokenomyError
from tokenomy.budget import HeadAdaptive, Keep, Pyramid, kept_count
from tokenomy.select import prioritize, top_k


def test_top_k_keeps_highest_in_positional_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])
    indices, valid = top_k(scores, 3)
    assert indices.tolist() == [[1, 2, 3]]
    assert valid is None


def test_top_k_ragged_counts_mark_unused_slots():
    scores = torch.tensor([[[5.0, 1, 4, 2], [0.0, 3, 1, 2]]])  # (1, 2 heads, 4)
    indices, valid = top_k(scores, torch.tensor([[3, 1]]))
    assert indices.shape == (1, 2, 3)
    assert indices[0, 0].tolist() == [0, 2, 3]
    assert indices[0, 1, 0].item() == 1 and valid[0, 1].tolist() == [True, False, False]
    assert valid[0, 0].all()


def test_top_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        top_k(torch.zeros(1, 3), 4)


def test_prioritize_protects_recent_then_sinks_then_scores():
    scores = torch.tensor([[[9.0, 0, 0, 8, 0, 0, 0, 0]]])
    p = prioritize(scores, first=1, last=2)
    order = p[0, 0].argsort(descending=True).tolist()
    assert order[:2] == [7, 6]  # most recent first
    assert order[2] == 0  # the sink (it also has a high score, but protection ranks it)
    assert order[3] == 3  # then the best ordinary score
    # A budget smaller than the protected set still picks exactly k, most recent first.
    idx, _ = top_k(p, 1)
    assert idx.tolist() == [[[7]]]


def test_prioritize_follows_real_tokens_under_left_padding():
    valid = torch.tensor([[False, False, True, True, True, True]])
    p = prioritize(torch.zeros(1, 1, 6), first=1, last=1, valid=valid)
    assert p[0, 0, :2].tolist() == [0.0, 0.0]  # padding always loses
    order = p[0, 0].argsort(descending=True).tolist()
    assert order[:2] == [5, 2]  # last real token, then the first real token (the sink)


def test_kept_count_rounds_half_up_and_never_empties():
    assert kept_count(0.5, 1001).item() == 501
    assert kept_count(0.5, 1000).item() == 500
    assert kept_count(0.01, 10).item() == 1
    assert kept_count(1.0, 7).item() == 7
    assert kept_count(0.5, 0).item() == 0


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, "half", True])
def test_keep_outside_unit_interval_is_one_clear_error(keep):
    with pytest.raises(TokenomyError, match="keep"):
        Keep(keep)


@pytest.mark.parametrize("n,layers,beta", [(100, 30, 20), (37, 5, 2), (10, 3, 20), (1000, 1, 20)])
def test_pyramid_total_equals_uniform_total_and_respects_caps(n, layers, beta):
    budget = Pyramid(0.25, beta=beta)
    counts = budget.schedule(torch.tensor([n]), layers)[0]
    assert counts.sum().item() == layers * kept_count(0.25, n).item()
    assert (counts <= n).all() and (counts >= 0).all()
    if layers > 1:
        assert counts[0] >= counts[-1]  # more in low layers


def test_head_adaptive_shares_budget_by_scores_with_a_floor():
    priority = torch.zeros(1, 2, 10)
    priority[0, 0] = torch.linspace(1.9, 1.0, 10)  # head 0: every token important
    priority[0, 1, 0] = 1.95  # head 1: one important token
    priority[0, 1, 1:] = 1.0
    counts = HeadAdaptive(floor=0.2).head_counts(priority, torch.tensor([5]))
    assert counts.sum().item() == 10
    assert counts[0, 0] > counts[0, 1] >= 1  # floor: int(5 * 0.2) = 1
    uniform = HeadAdaptive(floor=1.0).head_counts(priority, torch.tensor([5]))
    assert uniform.tolist() == [[5, 5]]
