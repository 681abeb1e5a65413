"""A StyleGAN3 is named as one wherever the product describes a generator: its Hub card and the random-init
baseline of the quality report (both once assumed StyleGAN2)."""

from __future__ import annotations

import json

import pytest
import torch

from genbackbones.cards import generator_card
from genbackbones import open_generator
from genbackbones.quality import random_init_like
from tests.cli_runs import run_cli


@pytest.mark.parametrize("source, family, other", [("random:sg3-t32", "StyleGAN3", "StyleGAN2 32 px"),
                                                   ("random:tiny32", "StyleGAN2", "StyleGAN3")])
def test_generator_card_names_the_family(tmp_path, source, family, other):
    out = tmp_path / "gen"
    proc = run_cli("generator", "convert", source, str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-1500:]
    meta = json.loads((out / "generator.json").read_text())
    card = generator_card(meta, out, "org/faces")
    assert f"# {family} 32 px · faces" in card
    assert f"A frozen **{family}** generator" in card
    assert other not in card
    assert ("Alias-Free Generative Adversarial Networks" in card) == (family == "StyleGAN3")
    assert f"- {family.lower()}" in card  # the Hub tag


def test_random_init_baseline_keeps_the_family():
    G = open_generator("random:sg3-t32").G
    fresh = random_init_like(G, seed=1)
    assert type(fresh) is type(G) and fresh.init_kwargs == G.init_kwargs
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert fresh(z, None).shape == G(z, None).shape
    differs = [not torch.equal(a, b) for a, b in zip(fresh.parameters(), G.parameters())]
    assert any(differs), "random_init_like must give fresh weights"
