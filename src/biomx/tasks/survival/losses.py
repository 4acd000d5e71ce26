"""Training losses of the two survival models, and the time bins of the discrete-time one.

Both are negative log-likelihoods per sample of the batch, written with dense (B, B) and (B, K)
tensors: batches are small, and the masks spell out the formulas (risk sets, tie groups)
literally, which is what the tests check against lifelines and hand-computed values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cox_loss(log_risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, ties: str = "efron") -> torch.Tensor:
    """Negative Cox log partial likelihood of a batch, divided by its number of events.

    Breslow: sum over events i of eta_i - log sum_{j: T_j >= T_i} exp(eta_j).
    Efron: the d events tied at a time t share the risk set, the l-th of them (l = 0..d-1) seeing
    sum_R exp(eta) - (l / d) sum_D exp(eta), where D are the events at t.

    Args:
        log_risk: (B,) network outputs eta.
        time, event: (B,) observed times and 0/1 event indicators.
        ties: "efron" or "breslow".

    Returns:
        A scalar; 0 (still attached to the graph) for a batch without events.
    """
    eta = log_risk.reshape(-1).float()
    time, event = time.reshape(-1).float(), event.reshape(-1) > 0.5
    if not event.any():
        return 0.0 * eta.sum()
    shift = eta.detach().max()  # exp of large log-risks would overflow; the shift cancels out
    w = torch.exp(eta - shift)
    at_risk = time[None, :] >= time[:, None]  # [i, j]: j is in the risk set of i's time
    risk_sum = (at_risk * w[None, :]).sum(dim=1)  # (B,)
    if ties == "breslow":
        log_den = torch.log(risk_sum)
    else:
        tied = (time[None, :] == time[:, None]) & event[None, :] & event[:, None]  # events at the same time
        d = tied.sum(dim=1).clamp(min=1)
        tied_sum = (tied * w[None, :]).sum(dim=1)
        # rank of event i among its tied events (0..d-1): the order is arbitrary, the sum is not
        index = torch.arange(len(eta), device=eta.device)
        rank = (tied & (index[None, :] < index[:, None])).sum(dim=1)
        log_den = torch.log(risk_sum - rank / d * tied_sum)
    terms = (eta - shift - log_den)[event]
    return -terms.sum() / event.sum()


def bin_cuts(times: np.ndarray, events: np.ndarray, bins: int) -> list[float]:
    """Right edges of the time bins: quantiles of the event times (duplicates merged, so there
    may be fewer than `bins`); the first bin starts at 0."""
    event_times = np.asarray(times, dtype=np.float64)[np.asarray(events) > 0.5]
    cuts = np.unique(np.quantile(event_times, np.linspace(0.0, 1.0, bins + 1)[1:]))
    cuts = cuts[cuts > 0]
    return [float(c) for c in cuts] if len(cuts) else [float(event_times.max() or 1.0)]


def discretize(time: torch.Tensor, event: torch.Tensor, cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin index, event in that bin) per sample.

    A time in (c_{k-1}, c_k] falls in bin k (0-based, the first bin is [0, c_0]). An event there
    is an event in bin k. A censoring there counts as surviving bins 0..k-1 only (Kvamme & Borgan's
    "left" rounding: it is not known whether the sample outlived bin k). Beyond the last cut
    everything is censored at the last cut.
    """
    k = torch.searchsorted(cuts, time.contiguous(), right=False)  # first cut >= time
    beyond = k >= len(cuts)
    ev = (event > 0.5) & ~beyond
    idx = torch.where(ev, k, k - 1).clamp(max=len(cuts) - 1)  # censored: last bin fully survived
    return idx, ev


def logistic_hazard_loss(logits: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                         cuts: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the discrete-time hazard model, averaged over the batch.

    With h_k = sigmoid(logit_k): an event in bin k contributes log h_k + sum_{j<k} log(1 - h_j), a
    censoring after bin k sum_{j<=k} log(1 - h_j), i.e. binary cross-entropy of each bin lived
    through (target 0) and of the event bin (target 1).
    """
    logits = logits.float()
    idx, ev = discretize(time.reshape(-1).float(), event.reshape(-1), cuts.to(logits.device))
    bins = torch.arange(logits.shape[1], device=logits.device)
    # idx may be -1 (censored inside the first bin): no bin counted, likelihood 1
    counted = bins[None, :] <= idx[:, None]
    target = ((bins[None, :] == idx[:, None]) & ev[:, None]).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * counted).sum() / len(logits)


def hazard_survival(logits: torch.Tensor) -> torch.Tensor:
    """Survival at each cut, prod_{j<=k} (1 - h_j), computed as exp(sum log sigmoid(-logit))."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits.float()), dim=1))


def null_hazard_logits(time: np.ndarray, event: np.ndarray, cuts: list[float]) -> list[float]:
    """The logit of each bin's hazard without covariates (events in the bin / samples at risk in
    it, with `discretize`'s rules): the maximum-likelihood fit of the model to the training split.

    Added to the network's outputs, it lets a freshly initialised network (logits near 0, i.e. a
    hazard of one half per bin) start from the population's survival curve and learn only how
    each sample differs from it."""
    idx, ev = discretize(torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32),
                         torch.tensor(cuts, dtype=torch.float32))  # fmt: skip
    idx, ev = idx.numpy(), ev.numpy()
    at_risk = np.array([(idx >= k).sum() for k in range(len(cuts))], dtype=np.float64)
    events = np.array([(ev & (idx == k)).sum() for k in range(len(cuts))], dtype=np.float64)
    hazard = np.clip(np.divide(events, at_risk, out=np.zeros(len(cuts)), where=at_risk > 0), 1e-4, 1 - 1e-4)
    return [float(v) for v in np.log(hazard / (1.0 - hazard))]
