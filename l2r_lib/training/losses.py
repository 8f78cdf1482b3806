"""The losses of one training round, as pure functions on tensors (no model, no config).

- ``weighted_mle_loss``: next-token cross-entropy where prompt tokens (demos and question) weigh
  ``w`` and the rationale + answer weigh 1, normalised by the number of predicted tokens;
  ``chunked_mle_loss`` is the same loss from final hidden states and the output layer, without
  the full-vocabulary logits of the whole batch (what training computes).
- ``triplet_loss``: self-reflection; the anchor (a teacher rationale) is pulled toward another
  correct rationale of the same question and pushed from the student's own wrong one, with
  distance ``1 - cos`` and a margin; rows without a positive and a negative contribute nothing.
  ``triplet_distances`` gives its two halves, mean d(anchor, positive) and d(anchor, negative).
- ``REPRESENTATIONS``: a rationale's representation from final hidden states over a span that
  ends with the end token appended to every view: ``eos`` the state at that end token (the
  official code; no MLE term trains that state), ``last`` the last answer token (departure: the
  state the MLE trains to predict the end), ``pool`` the mean over the rationale (departure).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of a position that is not predicted (padding)
# predicted tokens whose fp32 logits exist at once in chunked_mle_loss: 1024 x 151,936 (Qwen2.5's
# vocabulary) x 4 bytes = 0.6 GiB, against 8 x 512 x 151,936 x 4 = 2.3 GiB for a whole batch (and its gradient)
LOSS_CHUNK_TOKENS = 1024


def weighted_mle_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, normaliser: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Weighted next-token loss: ``sum(w_t * CE_t) / #predicted tokens``.

    Args:
        logits: (B, L, V) scores at every position.
        labels: (B, L) the input ids, ``IGNORE_INDEX`` where nothing is predicted (padding).
            Shifted here: position t's logits predict ``labels[:, t + 1]``.
        weights: (B, L) weight of predicting ``labels[:, t]`` (prompt tokens ``w``, the rest 1).
        normaliser: what the sum is divided by instead of this batch's predicted tokens (data
            parallel: the count over every process's share of the batch, over the process count).

    Returns:
        () the loss; 0 when nothing is predicted.
    """
    assert logits.shape[:2] == labels.shape == weights.shape, f"{logits.shape=} {labels.shape=} {weights.shape=}"
    shift_logits = logits[:, :-1].float()  # (B, L-1, V)
    shift_labels = labels[:, 1:]  # (B, L-1)
    shift_weights = weights[:, 1:].to(shift_logits.dtype)  # (B, L-1)
    ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view_as(shift_labels)  # (B, L-1), 0 at ignored positions
    valid = shift_labels.ne(IGNORE_INDEX)
    return (ce * shift_weights * valid).sum() / (valid.sum().clamp(min=1) if normaliser is None else normaliser)


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_t w_t * CE(h_t W^T + b, y_t)`` a chunk of rows at a time. The loss is a scalar, so each
    chunk's gradient (softmax - one-hot, times w) is taken in the forward pass while its logits
    exist, and only the gradients of h, W and b are kept for the backward pass, which scales them."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, w, chunk_tokens):
        grad_h = torch.empty_like(h) if h.requires_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, y.numel(), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            hc, yc, wc = h[part], y[part], w[part]
            logits = F.linear(hc, weight, bias).float()  # (C, V): the only logits in memory
            gold = logits.gather(1, yc[:, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            # CE = log sum exp - the gold logit; exp taken once, in place: four passes over (C, V), no
            # second (C, V) buffer (logsumexp, then softmax, would take eight and allocate one)
            grad = logits.sub_(top).exp_()
            norm = grad.sum(dim=-1)
            total += ((top.squeeze(1) + norm.log() - gold) * wc).sum()
            if grad_h is None and grad_weight is None and grad_bias is None:
                continue
            grad.mul_((wc / norm)[:, None])  # w * softmax
            grad[torch.arange(yc.numel(), device=yc.device), yc] -= wc  # w * (softmax - one-hot)
            if grad_h is not None:
                grad_h[part] = (grad.to(weight.dtype) @ weight).to(h.dtype)
            if grad_weight is not None:
                grad_weight += grad.T @ hc.float()
            if grad_bias is not None:
                grad_bias += grad.sum(dim=0)
        ctx.save_for_backward(grad_h, grad_weight, grad_bias)
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda g, dtype=None: None if g is None else (g * grad_total).to(dtype or g.dtype)
        return scale(grad_h), scale(grad_weight, ctx.dtypes[0]), scale(grad_bias, ctx.dtypes[1]), None, None, None


def chunked_mle_loss(
    hidden: torch.Tensor, output_layer: torch.nn.Linear, labels: torch.Tensor, weights: torch.Tensor,
    normaliser: torch.Tensor | float | None = None, chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> torch.Tensor:
    """``weighted_mle_loss(output_layer(hidden), labels, weights, normaliser)`` without its (B, L, V)
    logits: only predicted positions, ``chunk_tokens`` at a time (``_LinearCrossEntropy``), the same
    FLOPs as the plain loss on those positions and no logits kept for the backward pass.

    Args:
        hidden: (B, L, H) final hidden states (after the model's last norm).
        output_layer: the model's lm_head, a plain ``nn.Linear``.
        labels, weights, normaliser: as in ``weighted_mle_loss``.
    """
    shift_labels = labels[:, 1:]
    valid = shift_labels.ne(IGNORE_INDEX)  # (B, L-1)
    h, y, w = hidden[:, :-1][valid], shift_labels[valid], weights[:, 1:][valid].float()  # (N, H), (N,), (N,)
    total = _LinearCrossEntropy.apply(h, output_layer.weight, output_layer.bias, y, w, chunk_tokens)
    return total / (valid.sum().clamp(min=1) if normaliser is None else normaliser)


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x, y)`` row-wise: (N, H), (N, H) -> (N,)."""
    return 1.0 - F.cosine_similarity(x, y, dim=-1)


def triplet_distances(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked means of ``d(anchor, positive)`` and ``d(anchor, negative)``: (N, H) x3, (N,) -> (), ();
    NaN when no row is masked."""
    mask = mask.bool()
    return cosine_distance(anchor[mask], positive[mask]).mean(), cosine_distance(anchor[mask], negative[mask]).mean()


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, mask: torch.Tensor, margin: float = 1.0,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Masked mean of ``max(d(a, p) - d(a, n) + margin, 0)`` with ``d = 1 - cos``.

    Args:
        anchor, positive, negative: (N, H) representations.
        mask: (N,) bool or 0/1; rows that have both a positive and a negative.
        margin: the triplet margin.
        normaliser: what the sum is divided by instead of the masked rows (see ``weighted_mle_loss``).

    Returns:
        () the mean over masked rows; 0 (with gradient graph intact) when no row is masked.
    """
    assert anchor.shape == positive.shape == negative.shape, f"{anchor.shape=} {positive.shape=} {negative.shape=}"
    assert mask.shape == anchor.shape[:1], f"{mask.shape=} vs {anchor.shape=}"
    per_row = torch.clamp(cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin, min=0.0)
    mask = mask.to(per_row.dtype)
    return (per_row * mask).sum() / (mask.sum().clamp(min=1.0) if normaliser is None else normaliser)


def last_token_repr(hidden: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position of each row's span.

    Args:
        hidden: (B, L, H) final-layer hidden states.
        span: (B, L) bool, True on the rationale's tokens (any padding side; at least one True a row).

    Returns:
        (B, H)
    """
    assert hidden.shape[:2] == span.shape, f"{hidden.shape=} {span.shape=}"
    positions = torch.arange(span.size(1), device=span.device).expand_as(span)
    last = torch.where(span.bool(), positions, -1).max(dim=1).values  # (B,)
    assert bool((last >= 0).all()), "every row needs a non-empty span"
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def pooled_repr(hidden: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over each row's span: (B, L, H), (B, L) -> (B, H)."""
    assert hidden.shape[:2] == span.shape, f"{hidden.shape=} {span.shape=}"
    weights = span.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def without_end(span: torch.Tensor) -> torch.Tensor:
    """``span`` (B, L) less its last True position a row (the appended end token)."""
    positions = torch.arange(span.size(1), device=span.device).expand_as(span)
    last = torch.where(span.bool(), positions, -1).max(dim=1, keepdim=True).values  # (B, 1)
    return span.bool() & positions.ne(last)


def end_token_repr(hidden: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The state at the appended end token, the span's last position: (B, L, H), (B, L) -> (B, H)."""
    return last_token_repr(hidden, span)


def answer_token_repr(hidden: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The state at the last token before the end token (the answer line's last token)."""
    return last_token_repr(hidden, without_end(span))


def text_pooled_repr(hidden: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The mean state over the span less its end token."""
    return pooled_repr(hidden, without_end(span))


# Each takes a span (B, L) that ends with the appended end token.
REPRESENTATIONS = {"eos": end_token_repr, "last": answer_token_repr, "pool": text_pooled_repr}
