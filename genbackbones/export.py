"""Export a trained backbone as a timm-loadable folder: model.safetensors + config.json + README.md.

The contract is the one line users type, for every architecture:

    timm.create_model('local-dir:<folder>', pretrained=True, features_only=True)   # or 'hf-hub:org/name'

returns the *trained* backbone, and any other request fails loudly instead of
returning untrained layers. How:

* the folder is written by timm's own `save_for_hf`, so config.json follows timm's
  conventions; its `model_args` carry the feature options the backbone was trained
  with (`features_only`, HRNet's `feature_location=''`, `out_indices`), which timm
  applies when it builds the model, so the plain line needs no extra argument;
* model.safetensors holds only modules that were trained: for HRNet, the
  features model itself (stem + branches), not timm's classification head
  (`incre`/`downsamp`/`final_layer`), and `model_args.pretrained_strict` makes timm
  refuse a load that would leave any module at its random initialisation;
* after writing, the folder is loaded back through exactly that line and its
  features must be bitwise equal to the trained module's (`verify_export`).

config.json's `pretrained_cfg` is the truth about these weights (the input size
and normalisation they were trained with, bicubic resizing as the evaluator does,
their licence), not the architecture's ImageNet defaults; our provenance sits under
the root key `genbackbones` (timm ignores extra root keys).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.models import save_for_hf

from . import atomic, outputs
from .backbones import BackboneSpec, create_backbone, is_hrnet, quiet_timm
from .cards import LOCAL_PREFIX, backbone_card, load_line
from .errors import UserError, first_line
from .evaluate.report import RUN_MODEL_INDEX, read_model_index



def pretrained_cfg_for(arch: str, input_size: int, mean, std, license: str, tag: str) -> dict:
    """The truth about these weights; only structural fields come from timm's default cfg."""
    default = timm.models.get_pretrained_cfg(arch.split(".")[0])
    default = default.to_dict() if default is not None else {}
    return {
        "architecture": arch.split(".")[0],
        "tag": tag,
        "custom_load": False,
        "input_size": [3, input_size, input_size],
        "fixed_input_size": bool(default.get("fixed_input_size", False)),
        "interpolation": "bicubic",  # as the evaluator and the data loaders resize (data/images.py)
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(mean),
        "std": list(std),
        "num_classes": 0,
        "pool_size": None,
        "first_conv": default.get("first_conv", ""),
        "classifier": default.get("classifier", ""),
        "license": license,
    }


def backbone_state_from_checkpoint(checkpoint: Path, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone's weights from a run checkpoint (the trained model is `model.safetensors`)."""
    path = Path(checkpoint) / "model.safetensors"
    if not path.exists():
        raise UserError(f"{path} is missing; the run has no complete checkpoint to export")
    try:
        state = safetensors.torch.load_file(str(path))
    except Exception as err:
        raise UserError(f"{path} is unreadable ({first_line(err, 100)}); that checkpoint is damaged "
                        "(`genbackbones export RUN` takes the newest intact one)") from None
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def export_backbone(features: torch.nn.Module, spec: BackboneSpec, out: Path, *, input_size: int, mean, std,
                    license: str, provenance: dict, card: dict | None = None, overwrite: bool = False,
                    extra_files: dict[str, str] | None = None, inputs: tuple | list = ()) -> Path:
    """Write the export folder atomically and check that the plain timm line loads identical features.

    `out` is claimed first (outputs.py): locked, and new or empty unless `overwrite`,
    which never replaces a run, the `inputs` read, or a folder holding them.
    """
    model, model_args = _model_to_save(features, spec)
    model.pretrained_cfg = pretrained_cfg_for(spec.arch, input_size, mean, std, license, provenance["method"])
    if model is features:
        # a features-only class has no classifier; naming one makes timm load non-strictly (a num_classes
        # mismatch drops the named classifier and turns `pretrained_strict` off)
        model.pretrained_cfg.pop("classifier")
    provenance = {**provenance, "feature_channels": list(features.feature_info.channels())}
    out = Path(out)
    with outputs.claim(out, overwrite=overwrite, inputs=inputs), atomic.directory(out, overwrite=True) as tmp:
        save_for_hf(model, str(tmp), model_args=model_args, safe_serialization=True,
                    model_config={"genbackbones": provenance})
        config = json.loads((tmp / "config.json").read_text())
        (tmp / "README.md").write_text(backbone_card(config, load_line(out), card))
        for name, text in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        verify_export(tmp, features, input_size)
    return out


def _model_to_save(features: torch.nn.Module, spec: BackboneSpec) -> tuple[torch.nn.Module, dict]:
    """The module whose state dict is the export, and the `model_args` that rebuild the trained features.

    HRNet's features model is its own timm class, saved as is (only trained modules).
    Other architectures are wrapped by timm's FeatureListNet, which has no model
    config; their weights go into the headless model (num_classes=0), whose keys are
    the same unless `out_indices` cut the network short. Then the modules past the
    last level were never trained: they are saved as NaN, so the plain line (which
    prunes them again) loads strictly and gives the trained levels, and a user who
    asks timm for more levels gets NaN features instead of plausible random ones.
    """
    if is_hrnet(spec.arch):
        features.num_classes = 0  # a headless feature extractor (the class keeps timm's default 1000)
        return features, {"pretrained_strict": True}
    full = timm.create_model(spec.arch.split(".")[0], pretrained=False, num_classes=0)
    state = features.state_dict()
    result = full.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"feature weights do not fit {spec.arch}: {result.unexpected_keys[:5]}")
    model_args = {"features_only": True}
    if spec.out_indices is not None:
        model_args["out_indices"] = list(spec.out_indices)
    untrained = full.state_dict()
    for key in result.missing_keys:
        if untrained[key].is_floating_point():
            untrained[key].fill_(float("nan"))  # shares storage with the parameter or buffer
    model_args["pretrained_strict"] = True
    return full, model_args


@torch.no_grad()
def verify_export(folder: Path, features: torch.nn.Module, input_size: int) -> None:
    """Load the folder through the plain line users type and require bitwise-identical features."""
    with quiet_timm():
        loaded = timm.create_model(f"{LOCAL_PREFIX}{folder}", pretrained=True, features_only=True).eval()
    was_training = features.training
    features.eval()
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        expected, got = features(x), loaded(x)
        if len(expected) != len(got) or not all(torch.equal(a, b) for a, b in zip(expected, got)):
            raise RuntimeError(f"export check failed: {folder} does not load back to the trained features")
    finally:
        features.train(was_training)


def export_run(run_dir: Path, out: Path | None = None, card: dict | None = None, console=None,
               overwrite: bool = False) -> Path:
    """Export the newest intact checkpoint of a run to `<run>/export` (replaced) or `out` (new or empty, or
    replaced with `overwrite`; never the run itself or a folder holding it).

    Damaged newer checkpoints (engine/checkpoints.py: `verify_checkpoint`) are skipped
    with one `note:` line each on `console` (default: stderr)."""
    from rich.console import Console
    from rich.text import Text

    from .engine.checkpoints import checkpoint_step, latest_intact_checkpoint, no_intact_checkpoint, skipped_notes
    from .methods import get_method
    from .recipes import dump_recipe, load_recipe, to_dict

    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.exists():
        raise UserError(f"{run_dir} is not a genbackbones run (no recipe.yaml); pass a run folder from `pretrain`")
    recipe = load_recipe(recipe_path)
    method = get_method(recipe.method)
    if not method.exports_backbone:
        raise UserError(f"{run_dir} is a {recipe.method} run, which trains no backbone; nothing to export")
    checkpoint, skipped = latest_intact_checkpoint(run_dir)
    if checkpoint is None and skipped:
        raise no_intact_checkpoint(run_dir, skipped, method.command)
    if checkpoint is None:
        raise UserError(f"{run_dir} has no complete checkpoint yet; train it first "
                        f"(genbackbones {method.command} --resume {shlex.quote(str(run_dir))})")
    console = console or Console(stderr=True)
    for note in skipped_notes(run_dir, skipped):
        console.print(Text.assemble(("note:", "yellow"), f" {note}"), highlight=False, soft_wrap=True)
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    spec = recipe.backbone
    features = create_backbone(spec.with_init("random"))  # the architecture; the weights come from the checkpoint
    state = backbone_state_from_checkpoint(checkpoint)
    missing, unexpected = features.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {checkpoint} does not match backbone {spec.arch}: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    step = checkpoint_step(checkpoint)
    images_per_step = run_info.get("images_per_step") or (
        recipe.train.batch_size * recipe.train.grad_accum * run_info.get("num_processes", 1))
    provenance = {
        "method": recipe.method,
        "recipe": to_dict(recipe),
        "backbone": _plain(asdict(spec)),
        "generator": run_info.get("generator") or {},
        "data": _data_desc(run_info.get("data")),
        "steps": step,
        "images_per_step": images_per_step,
        "images_seen": step * images_per_step,
        "taps": run_info.get("taps", []),
        "compute": run_info.get("compute", "-"),
        "versions": run_info.get("versions") or {},
    }
    mean_std = run_info.get("mean_std") or [[0.5] * 3, [0.5] * 3]
    license = recipe.license or provenance["generator"].get("license") or "other"
    card = dict(card or {})
    eval_results, eval_rows = read_model_index(run_dir) or ([], [])
    card.setdefault("eval_results", eval_results or None)
    card.setdefault("eval_rows", eval_rows)
    card.setdefault("model_name", run_dir.name)
    extra_files = {"recipe.yaml": dump_recipe(recipe)}
    if (run_dir / RUN_MODEL_INDEX).is_file():
        # the export carries its run's evaluation at the same relative path, so a copy written anywhere (and
        # `push` of it) renders the same card as the run does
        extra_files[RUN_MODEL_INDEX.as_posix()] = (run_dir / RUN_MODEL_INDEX).read_text()
    return export_backbone(features, spec, out or run_dir / "export", input_size=run_info.get("resolution", 64),
                           mean=mean_std[0], std=mean_std[1], license=license, provenance=provenance, card=card,
                           extra_files=extra_files, overwrite=overwrite or out is None, inputs=[run_dir])


def _data_desc(data) -> str | None:
    """The real images a method trained on, as one phrase (methods that train on generated images have none)."""
    if isinstance(data, dict):
        return f"{data.get('images', '?')} images from {data.get('source', '?')}"
    return data


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value if not isinstance(value, dict) \
        else {k: _plain(v) for k, v in value.items()}
