"""comp.likelihood: the likelihood losses of a head with a scale against the densities' formulas, and the
mixture average (mean of means; sigma from the mean of sigma^2 + mu^2) against the moments of samples drawn from
the mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comp import likelihood


def test_laplace_and_gaussian_nll_are_the_densities_with_sd_sigma():
    mu, sd, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    b = sd / math.sqrt(2)  # a Laplace of sd sigma has scale b = sigma / sqrt(2)
    laplace = (torch.abs(y - mu) / b + torch.log(2 * b)).mean()
    gauss = (0.5 * torch.log(2 * math.pi * sd**2) + (y - mu) ** 2 / (2 * sd**2)).mean()
    assert likelihood.nll("laplace", mu, sd, y) == pytest.approx(laplace.item(), abs=1e-6)
    assert likelihood.nll("gaussian_nll", mu, sd, y) == pytest.approx(gauss.item(), abs=1e-6)
    with pytest.raises(ValueError, match="not a likelihood loss"):
        likelihood.nll("mse", mu, sd, y)


def test_the_mixture_keeps_the_members_disagreement():
    a, b = np.array([[100.0, 10.0]]), np.array([[120.0, 20.0]])
    out = likelihood.mix([a, b])
    assert out[0, 0] == pytest.approx(110.0)
    assert out[0, 1] == pytest.approx(math.sqrt((10**2 + 100**2 + 20**2 + 120**2) / 2 - 110**2))  # sqrt(350)
    assert out[0, 1] > (10 + 20) / 2  # wider than the mean of the sigmas: the members disagree
    rng = np.random.default_rng(0)  # the moments of draws from the equal mixture of two Laplaces
    draws = np.concatenate([rng.laplace(100, 10 / math.sqrt(2), 200_000), rng.laplace(120, 20 / math.sqrt(2), 200_000)])
    assert draws.mean() == pytest.approx(out[0, 0], abs=0.1) and draws.std() == pytest.approx(out[0, 1], rel=0.01)
    weighted = likelihood.mix([a, b], np.array([0.75, 0.25]))
    assert weighted[0, 0] == pytest.approx(105.0)
    same = likelihood.mix([a, a, a])
    np.testing.assert_allclose(same, a)  # identical members: themselves
    t = torch.tensor([[3.0, 2.0], [-1.0, 0.0]])
    assert torch.allclose(likelihood.from_moments(likelihood.to_moments(t)), t)
