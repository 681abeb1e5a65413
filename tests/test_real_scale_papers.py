"""The recipes at the scale of the papers' other generators run: a training step (after the FLOP probe's) of the
LayerMatch HRNet-W18 recipes against NVIDIA's TensorFlow LSUN-church / LSUN-car config-f pickles and its StyleGAN3
AFHQv2 512 px pickle, each on CPU with a randomly initialised generator of the same configuration (the real files
cannot exist offline), with the training step's peak memory. The same harness as test_real_scale.py; a file of its
own so that pytest-xdist (one file per worker) can run it beside that one instead of after it.
"""

from __future__ import annotations

import json

import pytest

from tests.test_real_scale import OFFLINE, run_measured

pytestmark = pytest.mark.slow


# NVIDIA's TensorFlow LSUN config-f networks (paper 000's other two domains), as random generators of the same
# configuration: the recipes name the real pickles, which cannot exist offline
@pytest.mark.parametrize("recipe,preset,resolution", [("layermatch/hrnet_w18-lsun_church256", "church256", 256),
                                                      ("layermatch/hrnet_w18-lsun_car512", "car512", 512)],
                         ids=["church256", "car512"])
def test_layermatch_lsun_recipes_run_a_step_and_memory(tmp_path, recipe, preset, resolution):
    offline = [arg.replace("random:ffhq256", f"random:{preset}") for arg in OFFLINE]
    step_peak, peak = run_measured(tmp_path, preset, recipe, *offline, "--set", "backbone.init=random",
                                   "--set", "train.batch_size=1", resolution=resolution)
    print(f"layermatch hrnet_w18 {preset} ({resolution} px), batch 1: training step peak RSS "
          f"{step_peak / 2**20:.2f} GiB, whole process {peak / 2**20:.2f} GiB")
    recipe_text = (tmp_path / preset / "recipe.yaml").read_text()
    assert f"source: random:{preset}" in recipe_text and "mixed_precision: bf16" in recipe_text
    assert (tmp_path / preset / "export" / "config.json").exists()
    assert 0 < step_peak / 2**20 < 16


# NVIDIA's StyleGAN3 AFHQv2 512 px config-t network, as a random generator of the same configuration: StyleGAN3's
# layers are larger than the image (up to 532 px here), only their centres are matched
def test_layermatch_stylegan3_afhqv2_recipe_runs_a_step_and_memory(tmp_path):
    offline = [arg.replace("random:ffhq256", "random:sg3-t-afhqv2-512") for arg in OFFLINE]
    step_peak, peak = run_measured(tmp_path, "afhqv2", "layermatch/hrnet_w18-afhqv2_512", *offline,
                                   "--set", "backbone.init=random", "--set", "train.batch_size=1", resolution=512)
    print(f"layermatch hrnet_w18 sg3-t-afhqv2-512 (512 px), batch 1: training step peak RSS "
          f"{step_peak / 2**20:.2f} GiB, whole process {peak / 2**20:.2f} GiB")
    info = json.loads((tmp_path / "afhqv2" / "run.json").read_text())
    assert info["matches"] == ["synthesis.L1_36_512 <- level 4", "synthesis.L3_52_512 <- level 3",
                               "synthesis.L5_84_512 <- level 2", "synthesis.L7_148_483 <- level 1"]
    recipe_text = (tmp_path / "afhqv2" / "recipe.yaml").read_text()
    assert "source: random:sg3-t-afhqv2-512" in recipe_text and "mixed_precision: bf16" in recipe_text
    assert (tmp_path / "afhqv2" / "export" / "config.json").exists()
    assert 0 < step_peak / 2**20 < 16
