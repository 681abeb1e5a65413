"""The domain Fréchet distance: exact on known Gaussians, and it separates real from a random generator."""

from __future__ import annotations

import torch

from genbackbones.generators.open import open_generator
from genbackbones.quality import frechet_distance, quality_report, random_init_like


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 3
    std_a, std_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    mu_b = torch.tensor([1.0, 0.0, -2.0])
    a = (torch.randn(n, d, generator=g) * std_a).double()
    b = (torch.randn(n, d, generator=g) * std_b + mu_b).double()
    # FD of N(0, diag(sa^2)) and N(mu, diag(sb^2)) = |mu|^2 + sum (sa - sb)^2 = 5 + 0.25 + 1 + 0 = 6.25
    assert abs(frechet_distance(a, b) - 6.25) < 0.05
    assert abs(frechet_distance(a, a)) < 1e-6


def test_report_puts_real_close_and_a_random_generator_far():
    G = open_generator("random:small64").G
    report = quality_report(G, n=300, random_G=random_init_like(G, 1), net_steps=60)
    assert set(report) >= {"real_vs_real", "generated_vs_real", "random_init_vs_real"}
    assert report["real_vs_real"] < 0.5 * report["random_init_vs_real"]
    assert report["real_vs_real"] < 0.5 * report["generated_vs_real"]  # this generator is untrained too


def test_the_bundled_generator_is_far_closer_to_real_than_a_random_one():
    """Catches a broken or swapped shipped generator (README states the 5,000-image figures)."""
    G = open_generator("bundled").G
    report = quality_report(G, n=500, random_G=random_init_like(G), net_steps=150)
    assert report["generated_vs_real"] < 0.5 * report["random_init_vs_real"], report
    assert report["real_vs_real"] < report["generated_vs_real"], report
