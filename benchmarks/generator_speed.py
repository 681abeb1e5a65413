"""StyleGAN2 / StyleGAN3 speed, before vs after, in one process: G forward, the reconstruction pass, D forward.

The "before" code is read from git (default: commit 76f3a30, the generator as it was before
issue 18's speed work) into a throw-away package, so the old and the new implementation run
side by side in one process, on identical weights (one state dict loaded into both) and
identical inputs. Each measurement is a series of interleaved pairs (old then new, then new
then old, ...); the speed-up quoted is the median over pairs of old time / new time, which
cancels most of what other jobs on a shared machine do to absolute times.

What is timed, per resolution and batch:

    G forward         G(z, noise_mode='const') under no_grad: the default call (eval mode:
                      NVIDIA's fused modulated conv before; the per-shape choice after)
    G forward unfused the same with fused_modconv=False (what LayerMatch's trace runs)
    G reconstruction  LayerMatch's reconstruction pass: resume the traced synthesis from
                      `synthesis.b8.x` with a substitute (0.9 x the traced activation) that
                      requires grad, MSE to the traced image, backward into the substitute
                      (unfused, like the recipes)
    D forward         D(img) under no_grad

Architectures: 64 px is the quickstart generator's (`random:small64`: 32 channels at 64 px,
128 at <= 16 px); 256 px is NVIDIA's layout with channel_max 128 (128 channels at every
resolution, 512-d latents, 8 mapping layers).

`--family stylegan3` times the StyleGAN3 generator instead (G forward, G forward fused = the
grouped convolution, and G reconstruction from `synthesis.L2_*`, a 36 px layer early in the
chain, so that the backward runs through most of synthesis; no D: StyleGAN3 uses StyleGAN2's).
Architectures: the `random:sg3-t64` preset (config t, 128 channels throughout) and
`random:sg3-t-ffhqu-256` (NVIDIA's stylegan3-t-ffhqu-256x256 configuration, 23 M parameters).
`--before` then defaults to 76d7757, the first committed StyleGAN3.

    python benchmarks/generator_speed.py                                 # everything, ~30-40 min on 2 busy cores
    python benchmarks/generator_speed.py --sizes 64 --batches 8 --pairs 5 # one cell
    python benchmarks/generator_speed.py --before 76f3a30 --after HEAD~1  # two commits against each other
    python benchmarks/generator_speed.py --before WORKTREE --compile     # what torch.compile adds
    python benchmarks/generator_speed.py --family stylegan3 --batches 2 --pairs 3  # StyleGAN3

`--after` defaults to the working tree. Writes a JSON file (`--json`) and prints a table.
"""

from __future__ import annotations

import os

# before torch loads (see tests/conftest.py): spinning OpenMP threads are many times slower on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BEFORE_ISSUE_18 = "76f3a30"
FIRST_STYLEGAN3 = "76d7757"
MODULES = {"stylegan2": ("stylegan2", "ops"),  # what each generator is made of (stylegan2 imports only .ops,
           "stylegan3": ("stylegan3", "stylegan2", "ops")}  # stylegan3 imports those two)
RESUME_TAP = {"stylegan2": "synthesis.b8.x", "stylegan3": 3}  # StyleGAN3: the 4th tap (L2), names vary by config

ARCHS = {
    64: dict(G=dict(z_dim=128, c_dim=0, w_dim=128, img_resolution=64, img_channels=3,
                    mapping_kwargs={"num_layers": 4}, synthesis_kwargs={"channel_base": 2048, "channel_max": 128}),
             D=dict(c_dim=0, img_resolution=64, img_channels=3, channel_base=2048, channel_max=128)),
    256: dict(G=dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                     mapping_kwargs={"num_layers": 8}, synthesis_kwargs={"channel_base": 32768, "channel_max": 128}),
              D=dict(c_dim=0, img_resolution=256, img_channels=3, channel_base=32768, channel_max=128)),
}


def stylegan3_archs() -> dict:
    """The random: presets' StyleGAN3 architectures (read from the files on disk: plain constructor kwargs)."""
    from genbackbones.generators.open import RANDOM_STYLEGAN3_PRESETS as presets

    return {64: dict(G=presets["sg3-t64"], D=None), 256: dict(G=presets["sg3-t-ffhqu-256"], D=None)}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_version(rev: str, tmp: Path, label: str, family: str = "stylegan2"):
    """The `family` module of git revision `rev` ("WORKTREE" = the files on disk), as its own package."""
    if rev == "WORKTREE":
        return importlib.import_module(f"genbackbones.generators.{family}")
    name = f"gen_{label}_" + "".join(c if c.isalnum() else "_" for c in rev)
    pkg = tmp / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module in MODULES[family]:
        try:
            src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:genbackbones/generators/{module}.py"],
                                 check=True, capture_output=True, text=True).stdout
        except (subprocess.CalledProcessError, FileNotFoundError) as err:
            why = (getattr(err, "stderr", None) or str(err)).strip()
            fail(f"cannot read genbackbones/generators/{module}.py at {rev!r} from git ({why}); "
                 "run from a git checkout of genbackbones and pass a revision it has")
        (pkg / f"{module}.py").write_text(src)
    sys.path.insert(0, str(tmp))
    return importlib.import_module(f"{name}.{family}")


def build(before, after, size: int, seed: int = 0, archs: dict = ARCHS):
    """(G, D) of both versions with one set of weights: the after-version's init, loaded into the before one.
    D is None where the architecture has none (StyleGAN3)."""
    arch = archs[size]
    torch.manual_seed(seed)
    G_after = after.Generator(**arch["G"])
    D_after = after.Discriminator(**arch["D"]) if arch["D"] else None
    with torch.no_grad():  # untrained noise strengths are 0; give the noise inputs a role (like random:<preset>)
        for name, p in G_after.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    G_before = before.Generator(**arch["G"])
    D_before = before.Discriminator(**arch["D"]) if arch["D"] else None
    G_before.load_state_dict(G_after.state_dict())
    if D_after is not None:
        D_before.load_state_dict(D_after.state_dict())
    nets = [G_before, D_before, G_after, D_after]
    for net in nets:
        if net is not None:
            net.eval().requires_grad_(False)
    return nets


def workloads(G, D, batch: int, compile_forward: bool = False):
    """name -> callable returning an output for the outputs check; inputs fixed by seed so both versions see
    the same. `compile_forward`: the no-grad forwards of G and D go through torch.compile."""
    z = torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        img = G(z, noise_mode="const")
        trace = G.trace(z, noise_mode="const", fused_modconv=False)
    resume_tap = RESUME_TAP[getattr(G, "family", "stylegan2")]
    resume_tap = list(trace.taps)[resume_tap] if isinstance(resume_tap, int) else resume_tap
    target = 0.9 * trace.taps[resume_tap]  # not the traced value itself, whose gradient would be exactly 0
    G_fwd = torch.compile(G) if compile_forward else G
    D_fwd = torch.compile(D) if compile_forward and D is not None else D

    def g_forward():
        with torch.no_grad():
            return G_fwd(z, noise_mode="const")

    def g_forward_unfused():
        with torch.no_grad():
            return G_fwd(z, noise_mode="const", fused_modconv=False)

    def g_forward_fused():
        with torch.no_grad():
            return G_fwd(z, noise_mode="const", fused_modconv=True)

    def g_reconstruction():
        sub = target.clone().requires_grad_(True)
        F.mse_loss(G.resume(trace, resume_tap, sub), trace.img).backward()
        return sub.grad

    def d_forward():
        with torch.no_grad():
            return D_fwd(img)

    if D is None:  # StyleGAN3: its default on CPU is unfused, so the other form is the grouped one
        return {"G forward": g_forward, "G forward fused": g_forward_fused, "G reconstruction": g_reconstruction}
    return {"G forward": g_forward, "G forward unfused": g_forward_unfused,
            "G reconstruction": g_reconstruction, "D forward": d_forward}


def pairs(old, new, n: int) -> tuple[list[float], list[float]]:
    """n interleaved timings of each, order alternating (old-new, new-old, ...) so neither always goes first."""
    t_old, t_new = [], []
    for i in range(n):
        for which in ((old, t_old), (new, t_new)) if i % 2 == 0 else ((new, t_new), (old, t_old)):
            fn, times = which
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return t_old, t_new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("stylegan2", "stylegan3"), default="stylegan2")
    parser.add_argument("--before", default=None,
                        help=f"git revision of the old code (default {BEFORE_ISSUE_18}; StyleGAN3: {FIRST_STYLEGAN3})")
    parser.add_argument("--after", default="WORKTREE", help="git revision of the new code (default: the files on disk)")
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--only", default=None, help="comma-separated workload names (default: all four)")
    parser.add_argument("--pairs", type=int, default=None, help="timed pairs per cell (default: 15 at 64 px, 5 at 256 px)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the after-version's G and D forwards (the first call, which compiles, "
                             "is reported and not timed); with --before WORKTREE this measures compiling alone")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        fail(f"--sizes and --batches take comma-separated integers, got {args.sizes!r} and {args.batches!r}")
    known_work = ["G forward", "G forward unfused", "G reconstruction", "D forward"] if args.family == "stylegan2" \
        else ["G forward", "G forward fused", "G reconstruction"]
    unknown_work = set(args.only.split(",")) - set(known_work) if args.only else set()
    if unknown_work:
        fail(f"--only: unknown workload(s) {sorted(unknown_work)}; choose from "
             + ", ".join(f"'{w}'" for w in known_work))
    archs = ARCHS if args.family == "stylegan2" else stylegan3_archs()
    args.before = args.before or (BEFORE_ISSUE_18 if args.family == "stylegan2" else FIRST_STYLEGAN3)
    unknown = [s for s in sizes if s not in archs]
    if unknown or any(b < 1 for b in batches) or (args.pairs is not None and args.pairs < 1):
        fail(f"--sizes must be among {sorted(archs)}; --batches and --pairs must be >= 1")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        before = load_version(args.before, Path(tmp), "before", args.family)
        after = load_version(args.after, Path(tmp), "after", args.family)
        rows = []
        load_start = os.getloadavg()
        t_start = time.perf_counter()
        for size in sizes:
            G_old, D_old, G_new, D_new = build(before, after, size, archs=archs)
            for batch in batches:
                old_work, new_work = workloads(G_old, D_old, batch), workloads(G_new, D_new, batch, args.compile)
                names = args.only.split(",") if args.only else list(old_work)
                for name in names:
                    old, new = old_work[name], new_work[name]
                    out_old = old()  # warm-up (oneDNN primitive creation) + outputs check
                    t = time.perf_counter()
                    out_new = new()
                    first_call_s = time.perf_counter() - t
                    diff = (out_old - out_new).abs().max().item()
                    scale = max(1.0, out_old.abs().max().item())
                    n = args.pairs or (15 if size <= 64 else 5)
                    t_old, t_new = pairs(old, new, n)
                    ratios = [o / w for o, w in zip(t_old, t_new)]
                    row = {"size": size, "batch": batch, "workload": name,
                           "before_s": round(statistics.median(t_old), 4), "after_s": round(statistics.median(t_new), 4),
                           "before_img_s": round(batch / statistics.median(t_old), 2),
                           "after_img_s": round(batch / statistics.median(t_new), 2),
                           "speedup": round(statistics.median(ratios), 3),
                           "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3),
                           "pairs": n, "max_abs_diff": diff, "max_abs_diff_rel": diff / scale,
                           "after_first_call_s": round(first_call_s, 1)}
                    rows.append(row)
                    print(f"{size:>4} px  batch {batch:>3}  {name:<18} before {row['before_img_s']:>8.2f} img/s  "
                          f"after {row['after_img_s']:>8.2f} img/s  x{row['speedup']:.2f} "
                          f"[{row['speedup_min']:.2f}-{row['speedup_max']:.2f}]  max|diff| {diff:.1e}"
                          + (f"  (first call, compiling: {first_call_s:.0f} s)" if args.compile else ""), flush=True)
            del G_old, D_old, G_new, D_new
    result = {
        "family": args.family, "before": args.before, "after": args.after, "compiled": args.compile,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "minutes": round((time.perf_counter() - t_start) / 60, 1), "rows": rows,
    }
    print()
    print("| size | batch | workload | before img/s | after img/s | speed-up (median of pairs) | min-max |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} | {r['workload']} | {r['before_img_s']:.2f} | {r['after_img_s']:.2f} "
              f"| **{r['speedup']:.2f}x** | {r['speedup_min']:.2f}-{r['speedup_max']:.2f} |")
    print(f"\n{result['threads']} torch threads, load average {result['load_average_start']} at the start, "
          f"{result['load_average_end']} at the end, {result['minutes']} min")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
