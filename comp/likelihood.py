"""A value with its uncertainty: the likelihood losses of a regression head that predicts a mean and a scale
(comp.tasks: task=regression with train.loss=laplace | gaussian_nll), and how such outputs are averaged.

Outputs are (N, 2): `value` (the mean mu) and `sigma`, the predictive distribution's standard deviation, in the
target's units. For the Laplace distribution sd = sqrt(2) b (b its scale), so the OSIC Pulmonary Fibrosis
metric's "Confidence" is sigma itself: its -sqrt(2)|y - mu| / sigma - ln(sqrt(2) sigma) is the Laplace
log-density with b = sigma / sqrt(2) (comp.competition_metrics.laplace_log_likelihood).

Averaging (TTA views, folds, seeds, blends): the outputs of M models are read as an equal- (or w-) weighted
mixture of their distributions, and the mixture's mean and standard deviation are kept:
    mu = sum_m w_m mu_m,   sigma^2 = sum_m w_m (sigma_m^2 + mu_m^2) - mu^2
(the law of total variance: the models' own spread plus their disagreement). The mixture of Laplace (or
Gaussian) densities is no Laplace, but its first two moments are exact, and it is never narrower than its
members' average; the mean of the sigmas would forget the disagreement between folds. Every averaging site
averages the moments (mu, sigma^2 + mu^2), which are linear in the weights (`to_moments`), and maps back
(`from_moments`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SCALE_LOSSES = ("laplace", "gaussian_nll")
MIN_SD = 1e-3  # the smallest sd in standardised target units: keeps the log-likelihood finite early in training


def sd_of(raw: torch.Tensor) -> torch.Tensor:
    """The (B,) standard deviation, in standardised units, of the head's second logit: softplus + MIN_SD."""
    return F.softplus(raw.float()) + MIN_SD


def nll(loss: str, mu: torch.Tensor, sd: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the (B,) targets `y` under Laplace(mu, b = sd / sqrt(2)) (`laplace`,
    torch.distributions.Laplace) or Normal(mu, sd) (`gaussian_nll`, torch's F.gaussian_nll_loss with the
    constant, full=True), all (B,) float tensors in the same units."""
    if loss == "laplace":
        return -torch.distributions.Laplace(mu, sd / math.sqrt(2)).log_prob(y).mean()
    if loss == "gaussian_nll":
        return F.gaussian_nll_loss(mu, y, sd**2, full=True, eps=MIN_SD**2)
    raise ValueError(f"not a likelihood loss: {loss!r} (choose from {SCALE_LOSSES})")


def to_moments(out: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(N, 2) [value, sigma] -> (N, 2) [mu, sigma^2 + mu^2]: the moments a weighted mean averages exactly."""
    mu, sd = out[:, :1], out[:, 1:2]
    parts = [mu, sd**2 + mu**2]
    return torch.cat(parts, 1) if isinstance(out, torch.Tensor) else np.concatenate(parts, 1)


def from_moments(m: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(N, 2) averaged moments -> (N, 2) [value, sigma] of the mixture (module doc); a variance rounded
    below 0 is 0."""
    mu, var = m[:, :1], m[:, 1:2] - m[:, :1] ** 2
    if isinstance(m, torch.Tensor):
        return torch.cat([mu, var.clamp_min(0).sqrt()], 1)
    return np.concatenate([mu, np.sqrt(np.maximum(var, 0))], 1)


def mix(outs: list[np.ndarray] | np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) [value, sigma] of the mixture of M members' (N, 2) outputs, weighted by `weights` (M,) summing
    to 1 (default equal): mu = the (weighted) mean of means, sigma = sqrt(sum w (sigma^2 + mu^2) - mu^2)."""
    stacked = np.stack([np.asarray(o, np.float64) for o in outs])
    w = np.full(len(stacked), 1 / len(stacked)) if weights is None else np.asarray(weights, np.float64)
    return from_moments(np.tensordot(w, np.stack([to_moments(o) for o in stacked]), axes=1))
