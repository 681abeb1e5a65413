"""LayerMatch step time vs its compute floor, measured in one run.

The floor is the sum of the parts a LayerMatch step cannot avoid, each timed
alone on the same inputs: the generator's traced forward (no grad), the
backbone+heads forward/backward on the match loss, and the reconstruction pass
(resume from a substituted activation + backward into it). The ratio
step / floor says how much the loop, the optimiser, standardisation and the
glue cost on top. Also prints img/s and the peak RSS of the process.

    python benchmarks/pretrain_step.py                      # quickstart recipe
    python benchmarks/pretrain_step.py --set backbone.arch=resnet18 --steps 30
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genbackbones.engine.loop import _train_step, make_accelerator, seed_step
from genbackbones.methods.layermatch import METHOD
from genbackbones.recipes import load_recipe


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions of each measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.overrides + ["train.steps=1000000", "train.log_with=none"])
    prepared = METHOD.prepare(recipe, num_processes=1)  # what `genbackbones pretrain` builds, nothing written
    G = prepared.handle.G
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = make_accelerator(recipe.train, Path(tmp))
        task = METHOD.build(prepared, recipe, accelerator)
        model, optimizer, fused = task.model, task.optimizer, task.fused_modconv
        phases = task.phases()
        n = recipe.train.batch_size
        step_counter = iter(range(10**9))

        def full_step():
            step = next(step_counter)
            seed_step(recipe.seed, step, 0)
            _train_step(accelerator, phases, step, recipe.train)

        z = G.sample_latents(n, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            trace = G.trace(z, noise_mode=recipe.generator.noise_mode, fused_modconv=fused)
        core = model

        def generator_forward():
            with torch.no_grad():
                G.trace(z, noise_mode=recipe.generator.noise_mode, fused_modconv=fused)

        def backbone_fwd_bwd():
            preds = core(trace.img)
            loss = sum(F.mse_loss(preds[m.key], core.to_target(m.tap, trace.taps[m.tap])) for m in core.matches)
            loss.backward()

        def reconstruction():
            # average over the matched taps: the step draws one at random
            for m in core.matches:
                sub = trace.taps[m.tap].clone().requires_grad_(True)
                F.mse_loss(G.resume(trace, m.tap, sub), trace.img).backward()

        for fn in (full_step, generator_forward, backbone_fwd_bwd, reconstruction):
            timed(fn, args.warmup)
        step_t = statistics.median(timed(full_step, args.steps))
        gen_t = statistics.median(timed(generator_forward, args.steps))
        bb_t = statistics.median(timed(backbone_fwd_bwd, args.steps))
        rec_t = statistics.median(timed(reconstruction, args.steps)) / len(core.matches)
    floor = gen_t + bb_t + (rec_t if recipe.method_cfg.rec_weight > 0 else 0.0)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": torch.get_num_threads(),
        "recipe": recipe.name, "backbone": recipe.backbone.arch, "generator": prepared.handle.meta.get("source"),
        "fused_modconv": fused,
        "resolution": G.img_resolution, "batch": n, "matches": len(core.matches),
        "step_s": round(step_t, 4), "generator_forward_s": round(gen_t, 4),
        "backbone_fwd_bwd_s": round(bb_t, 4), "reconstruction_s": round(rec_t, 4),
        "floor_s": round(floor, 4), "ratio": round(step_t / floor, 3),
        "img_per_s": round(n / step_t, 1), "peak_rss_gib": round(peak_rss_gib, 2),
    }
    for k, v in result.items():
        print(f"{k:>22}: {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
