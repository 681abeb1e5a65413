"""`pretrain`: recipe -> generator -> method(backbone) -> the loop -> samples -> export.

Everything that can be wrong with the user's input (recipe, generator, backbone,
resolutions) is checked before the run folder is created, so a bad input leaves
nothing behind. A run folder holds:

    recipe.yaml        the resolved recipe (what to pass to reproduce it)
    run.json           status, generator provenance, taps, timings, versions
    metrics.jsonl      every step's losses and throughput
    logs/              TensorBoard
    checkpoints/       accelerate states (resume from the latest)
    samples.png        generated images and reconstructions through predicted activations
    export/            the timm-loadable backbone (model.safetensors, config.json, README.md)
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console

from . import atomic
from .backbones import BackboneSpec, backbone_mean_std, create_backbone, feature_shapes
from .errors import UserError
from .export import versions
from .generators.sources import GeneratorHandle, open_generator
from .methods.layermatch import LayerMatchModel, LayerMatchTask, choose_taps
from .recipes import Recipe, dump_recipe
from .runs import finish_pretraining, new_run_dir, reopen_or_new, write_run_info

_write_run_info = write_run_info  # older name, kept for modules written against it
from .training import cosine_schedule, latest_checkpoint, load_checkpoint, make_accelerator, run_loop


def backbone_spec(recipe: Recipe) -> BackboneSpec:
    b = recipe.backbone
    return BackboneSpec(arch=b.arch, init=b.init, feature_location=b.feature_location,
                        out_indices=tuple(b.out_indices) if b.out_indices else None, pretrained_tag=b.pretrained_tag)


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW with the recipe's settings, in torch's fused (one kernel for all tensors) form.

    The default form loops over the ~230 parameter tensors of an HRNet with a handful of ops
    each: 7.7 ms a step on CPU against 2.2 ms fused (hrnet_w18_small, measured), which is
    1-2 % of a quickstart step spent on nothing but dispatch.
    """
    params = list(model.parameters())
    fused = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    return torch.optim.AdamW(params, lr=recipe.train.lr, betas=tuple(recipe.train.betas),
                             weight_decay=recipe.train.weight_decay, fused=fused or None)


def check_resolution(backbone: torch.nn.Module, spec: BackboneSpec, resolution: int) -> None:
    """A backbone that cannot take the generator's images is a recipe error, not a crash mid-run."""
    fixed = (getattr(backbone, "pretrained_cfg", {}) or {}).get("fixed_input_size")
    size = (getattr(backbone, "pretrained_cfg", {}) or {}).get("input_size", [3, resolution, resolution])[-1]
    if fixed and size != resolution:
        raise UserError(f"backbone {spec.arch} needs {size}x{size} inputs but the generator makes "
                        f"{resolution}x{resolution} images; choose a backbone without a fixed input size")
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, resolution, resolution))
    except Exception as err:
        raise UserError(f"backbone {spec.arch} cannot take the generator's {resolution}x{resolution} images "
                        f"({str(err).splitlines()[0][:120]}); use a larger generator or another backbone") from None
    finally:
        backbone.train()
    if min(s for _, s in feature_shapes(backbone, resolution)) < 1:
        raise UserError(f"generator resolution {resolution} is too small for {spec.arch}")


def describe_generator(handle: GeneratorHandle) -> dict:
    G = handle.G
    meta = handle.meta
    trained = meta.get("trained", True)
    desc = meta.get("description") or (
        f"randomly initialised StyleGAN2 ({meta.get('source')}, untrained)" if not trained else meta.get("source"))
    return {"source": meta.get("source"), "sha256": handle.sha256, "license": handle.license, "trained": trained,
            "description": desc, "resolution": G.img_resolution, "network": meta.get("network")}


def pretrain(recipe: Recipe | None = None, output: Path | None = None, resume: Path | None = None,
             console: Console | None = None, export: bool = True, steps: int | None = None) -> Path:
    """Run (or resume) a pretraining (LayerMatch, or GH-Feat for `method: ghfeat`); returns the run folder."""
    console = console or Console(stderr=True)
    recipe, run_dir = reopen_or_new(recipe, resume, steps, None, "pretrain")
    if recipe.method == "ghfeat":
        from .ghfeat import pretrain_ghfeat

        return pretrain_ghfeat(recipe, output=output, resume=resume, console=console, export=export, steps=steps)
    if recipe.method != "layermatch":
        raise UserError(f"pretrain runs layermatch or ghfeat recipes, got method {recipe.method!r} "
                        "(StyleGAN2 recipes go to `genbackbones train-generator`)")

    # -- validate everything before anything is written --------------------
    handle = open_generator(recipe.generator.source, recipe.generator.network, seed=recipe.seed)
    G = handle.G
    spec = backbone_spec(recipe)
    torch.manual_seed(recipe.seed)
    backbone = create_backbone(spec)
    check_resolution(backbone, spec, G.img_resolution)
    matches = choose_taps(G, backbone, G.img_resolution, recipe.layermatch.taps, recipe.layermatch.min_reduction)
    mean_std = backbone_mean_std(spec, backbone)

    checkpoint = None
    if run_dir is None:
        run_dir = new_run_dir(recipe, output)
    else:
        checkpoint = latest_checkpoint(run_dir)

    all_levels = {i for i, r in enumerate(backbone.feature_info.reduction()) if r >= recipe.layermatch.min_reduction}
    unused = bool(all_levels - {m.level for m in matches})
    accelerator = make_accelerator(recipe.train, run_dir, find_unused_parameters=unused)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    accelerator.wait_for_everyone()

    cfg = recipe.layermatch
    model = LayerMatchModel(backbone, matches, mean_std, head=cfg.head, head_hidden=cfg.head_hidden,
                            standardize=cfg.standardize, momentum=cfg.momentum)
    optimizer = make_optimizer(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = cosine_schedule(optimizer, recipe.train, recipe.train.steps)
    G.to(accelerator.device)
    task = LayerMatchTask(model, G, optimizer, scheduler, cfg, recipe.train, recipe.seed, accelerator.device)
    task.truncation_psi = recipe.generator.truncation_psi
    task.noise_mode = recipe.generator.noise_mode
    task.fused_modconv = recipe.generator.fused_modconv

    start = load_checkpoint(checkpoint, task.state_objects(), accelerator.device) if checkpoint is not None else 0
    info = {
        "status": "running", "method": recipe.method, "generator": describe_generator(handle),
        "taps": sorted({m.tap for m in matches}), "matches": [f"{m.tap} <- level {m.level}" for m in matches],
        "resolution": G.img_resolution, "mean_std": [list(mean_std[0]), list(mean_std[1])],
        "num_processes": accelerator.num_processes, "device": str(accelerator.device),
        "mixed_precision": recipe.train.mixed_precision, "versions": versions(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed_from_step": start,
    }
    write_run_info(accelerator, run_dir, info)
    if accelerator.is_main_process:
        console.print(f"[bold]run[/] {run_dir}  ·  {recipe.method}  ·  {spec.arch} ({spec.init} init)  ·  "
                      f"generator {info['generator']['description']}")
        if start:
            console.print(f"resuming from step {start} ({checkpoint})")
    t0 = time.perf_counter()
    run_loop(accelerator, task, recipe.train, recipe.seed, run_dir, start_step=start, description=recipe.method,
             console=console)
    finish_pretraining(accelerator, run_dir, info, time.perf_counter() - t0, start, recipe.train.steps,
                       task.sample_images, export)
    return run_dir
