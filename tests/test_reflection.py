"""The losses of l2r_lib.training.losses on small hand-made tensors."""

import pytest
import torch
import torch.nn.functional as F

from l2r_lib.training.losses import (
    IGNORE_INDEX, REPRESENTATIONS, cosine_distance, last_token_repr, pooled_repr, triplet_distances, triplet_loss,
    chunked_mle_loss, weighted_mle_loss, without_end,
)


def reference_triplet(a, p, n, margin):
    criterion = torch.nn.TripletMarginWithDistanceLoss(
        distance_function=lambda x, y: 1.0 - F.cosine_similarity(x, y), margin=margin, reduction="none"
    )
    return criterion(a, p, n)


@pytest.mark.parametrize("margin", [0.2, 0.5, 1.0])
def test_triplet_equals_torch_triplet_with_cosine_distance(margin):
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 6, 8).unbind(0)
    mask = torch.ones(6, dtype=torch.bool)
    expected = reference_triplet(a, p, n, margin).mean()
    torch.testing.assert_close(triplet_loss(a, p, n, mask, margin), expected)


def test_triplet_gradients_match_torch():
    torch.manual_seed(1)
    ours = [t.clone().requires_grad_() for t in torch.randn(3, 5, 4).unbind(0)]
    ref = [t.detach().clone().requires_grad_() for t in ours]
    triplet_loss(*ours, torch.ones(5), 1.0).backward()
    reference_triplet(*ref, 1.0).mean().backward()
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x.grad, y.grad)


def test_rows_without_negative_add_nothing():
    torch.manual_seed(2)
    a, p, n = torch.randn(3, 6, 8).unbind(0)
    mask = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    expected = reference_triplet(a[mask], p[mask], n[mask], 1.0).mean()
    torch.testing.assert_close(triplet_loss(a, p, n, mask, 1.0), expected)
    n2 = n.clone()
    n2[~mask] = torch.randn(3, 8) * 100  # whatever the unmasked rows hold
    torch.testing.assert_close(triplet_loss(a, p, n2, mask, 1.0), expected)


def test_no_masked_row_gives_zero_with_gradient_graph():
    a = torch.randn(3, 4, requires_grad=True)
    loss = triplet_loss(a, torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.bool), 1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))


def test_triplet_is_zero_when_positive_is_anchor_and_negative_opposite():
    a = torch.randn(4, 8)
    assert triplet_loss(a, a, -a, torch.ones(4), margin=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert triplet_loss(a, -a, a, torch.ones(4), margin=1.0).item() == pytest.approx(3.0, abs=1e-5)


def test_cosine_distance_range_and_symmetry():
    x, y = torch.randn(2, 5, 7).unbind(0)
    torch.testing.assert_close(cosine_distance(x, y), cosine_distance(y, x))
    torch.testing.assert_close(cosine_distance(x, x), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_distance(x, -x), torch.full((5,), 2.0))


def _mle_case():
    torch.manual_seed(3)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE_INDEX, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, IGNORE_INDEX]])  # left pad, right pad
    prompt = torch.tensor([[0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    return logits, labels, prompt


def test_prompt_tokens_carry_weight_w():
    logits, labels, prompt = _mle_case()
    w = 0.1
    total, count = 0.0, 0
    for b in range(2):
        for t in range(1, 6):  # logits at t-1 predict label t
            if labels[b, t] == IGNORE_INDEX:
                continue
            ce = F.cross_entropy(logits[b, t - 1], labels[b, t])
            total += (w if prompt[b, t] else 1.0) * ce
            count += 1
    weights = torch.where(prompt, w, 1.0)
    torch.testing.assert_close(weighted_mle_loss(logits, labels, weights), total / count)


def test_weight_one_is_plain_next_token_loss():
    logits, labels, _ = _mle_case()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(weighted_mle_loss(logits, labels, torch.ones(2, 6)), expected)


def test_weight_zero_makes_prompt_logits_irrelevant():
    logits, labels, prompt = _mle_case()
    weights = torch.where(prompt, 0.0, 1.0)
    changed = logits.clone()
    changed[:, :-1][prompt[:, 1:]] += torch.randn(int(prompt[:, 1:].sum()), 11) * 10  # logits predicting prompt tokens
    torch.testing.assert_close(weighted_mle_loss(logits, labels, weights), weighted_mle_loss(changed, labels, weights))


@pytest.mark.parametrize("chunk_tokens", [1, 7, 4096])
def test_chunked_loss_is_the_weighted_loss_and_its_gradient(chunk_tokens):
    """From hidden states through an output layer of a 3,000-word vocabulary, in chunks of any size:
    the same loss and the same gradients (hidden states, output weights and bias) to 1e-5."""
    torch.manual_seed(0)
    B, L, H, V = 3, 9, 16, 3000
    hidden = torch.randn(B, L, H, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=True)  # GPT-J's lm_head has a bias
    labels = torch.randint(0, V, (B, L))
    labels[0, 6:] = IGNORE_INDEX  # padding
    labels[2, :] = IGNORE_INDEX  # a row with nothing to predict
    weights = torch.where(torch.arange(L) < 4, 0.1, 1.0).expand(B, L)
    results = []
    for loss_fn in (lambda: weighted_mle_loss(head(hidden), labels, weights, 7.0),
                    lambda: chunked_mle_loss(hidden, head, labels, weights, 7.0, chunk_tokens=chunk_tokens)):
        loss = loss_fn()
        results.append((loss, *torch.autograd.grad(loss * 3.0, [hidden, head.weight, head.bias])))
    for plain, chunked in zip(*results):
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    assert results[0][1][2].abs().sum() == 0  # no gradient reaches an unpredicted row


def test_last_token_repr_any_padding_side():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float).view(2, 5, 3)
    span = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(last_token_repr(hidden, span), torch.stack([hidden[0, 3], hidden[1, 4]]))


def test_pooled_repr_is_mean_over_span():
    hidden = torch.randn(2, 5, 3)
    span = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1, 2:].mean(0)])
    torch.testing.assert_close(pooled_repr(hidden, span), expected)


def test_triplet_distances_are_the_two_halves_of_the_loss():
    torch.manual_seed(4)
    a, p, n = torch.randn(3, 6, 8).unbind(0)
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    d_pos, d_neg = triplet_distances(a, p, n, mask)
    torch.testing.assert_close(d_pos, cosine_distance(a, p)[mask].mean())
    torch.testing.assert_close(d_neg, cosine_distance(a, n)[mask].mean())
    margin = 5.0  # every row inside the margin: the loss is exactly d_pos - d_neg + margin
    torch.testing.assert_close(triplet_loss(a, p, n, mask, margin), d_pos - d_neg + margin)
    assert all(d.isnan() for d in triplet_distances(a, p, n, torch.zeros(6, dtype=torch.bool)))


def test_representations_read_the_span_that_ends_with_the_end_token():
    """Spans end with the appended end token: ``eos`` is the state there, ``last`` the one before
    (the answer's last token), ``pool`` the mean without the end token."""
    hidden = torch.randn(2, 6, 3)
    span = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)  # end tokens at 3 and 5
    assert without_end(span).int().tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]]
    torch.testing.assert_close(REPRESENTATIONS["eos"](hidden, span), torch.stack([hidden[0, 3], hidden[1, 5]]))
    torch.testing.assert_close(REPRESENTATIONS["last"](hidden, span), torch.stack([hidden[0, 2], hidden[1, 4]]))
    torch.testing.assert_close(REPRESENTATIONS["pool"](hidden, span), torch.stack([hidden[0, 1:3].mean(0), hidden[1, 3:5].mean(0)]))
    changed = hidden.clone()
    changed[0, 3] += 1.0  # only the end token's state
    assert not torch.allclose(REPRESENTATIONS["eos"](changed, span)[0], hidden[0, 3])
    for name in ("last", "pool"):
        torch.testing.assert_close(REPRESENTATIONS[name](changed, span), REPRESENTATIONS[name](hidden, span))
