"""LayerMatch step time vs its compute floor, measured in one run.

The floor is the sum of the parts a LayerMatch step cannot avoid, each timed
alone on the same inputs: the generator's traced forward (no grad), the
backbone+heads forward/backward on the match loss, and the reconstruction pass
(resume from a substituted activation + backward into it, averaged over the
matched taps; a step draws one). The ratio step / floor says how much the loop,
the optimiser, standardisation and the glue cost on top. The four are timed in
interleaved rounds (step, generator, backbone, reconstruction, step, ...), so a
change in machine load hits all of them alike; means over the rounds, in wall
time and in CPU time of the process (the steadier one when other jobs share the
cores). Also prints img/s, the load average and the peak RSS of the process.

    python benchmarks/pretrain_step.py                      # quickstart recipe
    python benchmarks/pretrain_step.py --set backbone.arch=resnet18 --steps 30
    python benchmarks/pretrain_step.py --before 76f3a30       # + the same with the old generator code
"""

from __future__ import annotations

import os

# before torch loads (see tests/conftest.py): spinning OpenMP threads are many times slower on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
from genbackbones.generators.base import freeze
from genbackbones.methods.layermatch import METHOD, LayerMatchTask
from genbackbones.recipes import load_recipe


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier figure.

    On a GPU the work is asynchronous: the device is synchronised before and after, so the wall time is the
    kernels' time too."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (each times all four parts once)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--before", default=None, metavar="REV",
                        help="also time the step and the floor with the StyleGAN2 code of this git revision "
                             "(same weights, interleaved in the same rounds), e.g. 76f3a30")
    args = parser.parse_args()
    result = measure(args.recipe, args.overrides, args.steps, args.warmup, args.before)
    for k, v in result.items():
        print(f"{k:>26}: {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def measure(recipe_name: str | None, overrides: list[str], steps: int = 20, warmup: int = 3,
            before_rev: str | None = None) -> dict:
    """Step and floor of a LayerMatch recipe, as a dict (also used by gpu_throughput.py)."""
    recipe = load_recipe(recipe_name, overrides + ["train.steps=1000000", "train.log_with=none"])
    prepared = METHOD.prepare(recipe, num_processes=1)  # what `genbackbones pretrain` builds, nothing written
    handle, cfg = prepared.handle, recipe.method_cfg
    G = handle.G
    generators = {"after": G}
    if before_rev:
        from generator_speed import load_version  # benchmarks/ is on sys.path when this script runs

        old = load_version(before_rev, Path(tempfile.mkdtemp()), "before")
        generators["before"] = freeze(old.Generator(**G.init_kwargs))
        generators["before"].load_state_dict(G.state_dict())
    use_rec = cfg.rec_weight > 0
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = make_accelerator(recipe.train, Path(tmp))
        built = METHOD.build(prepared, recipe, accelerator)  # the model, optimiser and schedule a run uses
        model, optimizer, scheduler = built.model, built.optimizer, built.scheduler
        n = recipe.train.batch_size
        fused = recipe.generator.fused_modconv
        noise_mode = recipe.generator.noise_mode
        z = G.sample_latents(n, generator=torch.Generator().manual_seed(0))
        core = model

        def generator_parts(gen) -> dict:
            """The step with generator `gen`, and the two floor parts that depend on the generator."""
            task = LayerMatchTask(model, gen, optimizer, scheduler, cfg, recipe.train, recipe.seed,
                                  accelerator.device, noise_mode=noise_mode, fused_modconv=fused)
            phases = task.phases()
            step_counter = iter(range(10**9))  # each version draws the same latents and taps, step by step
            with torch.no_grad():
                trace = gen.trace(z, noise_mode=noise_mode, fused_modconv=fused)

            def full_step():
                step = next(step_counter)
                seed_step(recipe.seed, step, 0)
                _train_step(accelerator, phases, step, recipe.train)

            def generator_forward():  # under the step's autocast, as in a training step (bf16 on a GPU)
                with torch.no_grad(), accelerator.autocast():
                    gen.trace(z, noise_mode=noise_mode, fused_modconv=fused)

            def reconstruction():
                # average over the matched taps: the step draws one at random
                for m in core.matches:
                    sub = trace.taps[m.tap].clone().requires_grad_(True)
                    with accelerator.autocast():
                        loss = F.mse_loss(gen.resume(trace, m.tap, sub), trace.img)
                    loss.backward()

            return {"step": full_step, "generator": generator_forward, "reconstruction": reconstruction}, trace

        parts, trace = {}, None
        for label, gen in generators.items():
            gen_parts, gen_trace = generator_parts(gen)
            parts.update({(label, k): fn for k, fn in gen_parts.items()})
            if label == "after":
                trace = gen_trace  # for the backbone part

        def backbone_fwd_bwd():
            with accelerator.autocast():
                loss = torch.stack(list(core.match_losses(core(trace.img), trace.taps).values())).mean()
            loss.backward()

        parts[("both", "backbone")] = backbone_fwd_bwd
        for fn in parts.values():
            for _ in range(warmup):
                fn()
        load_start = os.getloadavg()
        wall: dict[tuple, list[float]] = {k: [] for k in parts}
        cpu: dict[tuple, list[float]] = {k: [] for k in parts}
        for _ in range(steps):  # interleaved rounds
            for k, fn in parts.items():
                w, c = timed(fn)
                wall[k].append(w)
                cpu[k].append(c)
        for times in (wall, cpu):
            for label in generators:
                times[(label, "reconstruction")] = [t / len(core.matches) for t in times[(label, "reconstruction")]]

        def summary(times: dict[tuple, list[float]], label: str) -> list[float]:
            """Means over the rounds of step, generator, backbone, reconstruction, and their floor.

            Means, not medians: a step's reconstruction starts from the tap it draws, so step
            times are spread over the taps' costs and only their mean matches the floor's
            tap-averaged reconstruction."""
            keys = [(label, "step"), (label, "generator"), ("both", "backbone"), (label, "reconstruction")]
            mean = [statistics.fmean(times[k]) for k in keys]
            return mean + [mean[1] + mean[2] + (mean[3] if use_rec else 0.0)]

        step_t, gen_t, bb_t, rec_t, floor = summary(wall, "after")
        step_c, gen_c, bb_c, rec_c, floor_c = summary(cpu, "after")
        before = {}
        if before_rev:
            b_step, b_gen, _, b_rec, b_floor = summary(wall, "before")
            bc_step, bc_gen, _, bc_rec, bc_floor = summary(cpu, "before")
            before = {"before": before_rev, "before_step_s": round(b_step, 4),
                      "before_generator_forward_s": round(b_gen, 4), "before_reconstruction_s": round(b_rec, 4),
                      "before_floor_s": round(b_floor, 4), "before_ratio": round(b_step / b_floor, 3),
                      "floor_speedup": round(b_floor / floor, 3), "step_speedup": round(b_step / step_t, 3),
                      "cpu_floor_speedup": round(bc_floor / floor_c, 3),
                      "cpu_step_speedup": round(bc_step / step_c, 3), "before_ratio_cpu": round(bc_step / bc_floor, 3),
                      "before_img_per_s": round(n / b_step, 1)}
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": torch.get_num_threads(),
        "recipe": recipe.name, "backbone": recipe.backbone.arch, "generator": handle.meta.get("source"),
        "fused_modconv": fused,
        "resolution": G.img_resolution, "batch": n, "matches": len(core.matches),
        "step_s": round(step_t, 4), "generator_forward_s": round(gen_t, 4),
        "backbone_fwd_bwd_s": round(bb_t, 4), "reconstruction_s": round(rec_t, 4),
        "floor_s": round(floor, 4), "ratio": round(step_t / floor, 3),
        "cpu_step_s": round(step_c, 4), "cpu_generator_s": round(gen_c, 4),
        "cpu_backbone_s": round(bb_c, 4), "cpu_reconstruction_s": round(rec_c, 4),
        "cpu_floor_s": round(floor_c, 4), "ratio_cpu": round(step_c / floor_c, 3), "rounds": steps,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "img_per_s": round(n / step_t, 1), "peak_rss_gib": round(peak_rss_gib, 2), **before,
    }
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name()
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


if __name__ == "__main__":
    main()
