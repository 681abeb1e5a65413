"""Throughput of the real-scale recipes at 256 px: img/s, step / floor and peak memory, in under 5 minutes.

For a GPU (it runs on a CPU too, slowly: use `--steps 1 --warmup 1 --batch 1` there as a smoke test).
Each recipe runs as `genbackbones pretrain` would build it (method, accelerator, mixed precision from the
recipe), with what cannot be had offline replaced and said so in the output:

    generator   random:ffhq256, a randomly initialised StyleGAN2 of NVIDIA's FFHQ-256 configuration
                (throughput does not depend on the weights)
    backbone    init random (ImageNet weights would only change the numbers in it)
    GH-Feat     the bundled faces rendered at 256 px instead of FFHQ; perceptual `none` unless timm's
                vgg16.tv_in1k is in the Hugging Face cache (`--vgg` to insist)

LayerMatch recipes get the step / floor split of benchmarks/pretrain_step.py; GH-Feat only img/s.

    python benchmarks/gpu_throughput.py --json benchmarks/results/gpu_throughput.json
    python benchmarks/gpu_throughput.py --recipes layermatch/hrnet_w18-ffhq256 --batch 16
    python benchmarks/gpu_throughput.py --set train.channels_last=true --set train.compile=true
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pretrain_step.py beside this file

from pretrain_step import measure, timed  # noqa: E402

from genbackbones.engine.loop import _train_step, make_accelerator, seed_step  # noqa: E402
from genbackbones.errors import UserError  # noqa: E402
from genbackbones.methods import get_method  # noqa: E402
from genbackbones.recipes import load_recipe  # noqa: E402

RECIPES = ("layermatch/hrnet_w18-ffhq256", "layermatch/hrnet_w32-ffhq256", "ghfeat/resnet50-ffhq256")
OFFLINE = ["generator.source=random:ffhq256", "backbone.init=random"]


def ghfeat_throughput(recipe_name: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """img/s of GH-Feat's full step (encoder, discriminator, R1 at its interval) and peak memory."""
    recipe = load_recipe(recipe_name, overrides + ["train.log_with=none"])
    method = get_method(recipe.method)
    prepared = method.prepare(recipe, num_processes=1)
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = make_accelerator(recipe.train, Path(tmp))
        task = method.build(prepared, recipe, accelerator)
        phases = task.phases()

        def step(i: int = 0):
            seed_step(recipe.seed, i, 0)
            _train_step(accelerator, phases, i, recipe.train)
            task.after_step(i)

        for i in range(warmup):
            step(i)
        times = [timed(lambda i=i: step(warmup + i))[0] for i in range(steps)]
    mean = sum(times) / len(times)
    result = {"recipe": recipe.name, "backbone": recipe.backbone.arch, "batch": recipe.train.batch_size,
              "mixed_precision": recipe.train.mixed_precision, "step_s": round(mean, 4),
              "img_per_s": round(recipe.train.batch_size / mean, 1),
              "perceptual": recipe.method_cfg.perceptual}
    if torch.cuda.is_available():
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def one_recipe(name: str, args: argparse.Namespace) -> dict:
    overrides = OFFLINE + ([f"train.batch_size={args.batch}"] if args.batch else []) + args.overrides
    if name.startswith("layermatch/"):
        return measure(name, overrides, args.steps, args.warmup)
    extra = ["data.source=faces", "data.count=256"] + ([] if args.vgg else ["ghfeat.perceptual=none"])
    return ghfeat_throughput(name, overrides + extra, args.steps, args.warmup)


def _without(args: list[str], *options: str) -> list[str]:
    """`args` without the given options and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not any(a.startswith(f"{o}=") for o in options):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--batch", type=int, default=None, help="per-process batch (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (LayerMatch: rounds)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vgg", action="store_true", help="GH-Feat with its VGG16 perceptual loss (cached weights)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="recipe override for every recipe, e.g. --set train.channels_last=true "
                             "--set train.compile=true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one recipe, in this process
    args = parser.parse_args(argv)
    try:
        if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
            raise UserError("--steps and --batch must be >= 1, --warmup >= 0")
        names = args.recipes.split(",")
        bad = [n for n in names if not n.startswith(("layermatch/", "ghfeat/"))]
        if bad:
            raise UserError(f"--recipes: {bad[0]!r} is not a LayerMatch or GH-Feat recipe")
        if args.child:
            print(json.dumps(one_recipe(names[0], args)), flush=True)
            return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = []
    for name in names:  # one process each: its own accelerator state (the mixed precision differs) and peak memory
        child = [a for a in (argv if argv is not None else sys.argv[1:])]
        child = _without(child, "--recipes", "--json") + ["--recipes", name, "--child"]
        proc = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    record = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {platform.machine()}",
              "torch": torch.__version__, "replaced": OFFLINE, "wall_seconds": round(time.perf_counter() - started, 1),
              "runs": rows}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['device']}: {record['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
