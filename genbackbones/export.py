"""Export a trained backbone as a timm-loadable folder: model.safetensors + config.json + README.md.

The folder loads with `timm.create_model('local-dir:<folder>', pretrained=True)`
(also `features_only=True`), and the same files pushed to the Hub load as
`hf-hub:org/name`. `config.json` carries a *truthful* `pretrained_cfg` (the
normalisation and input size the backbone was trained with, its licence) rather
than the architecture's ImageNet defaults, plus our provenance under the root key
`genbackbones` (timm ignores extra root keys).
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard, ModelCardData

from . import __version__, atomic
from .backbones import BackboneSpec, create_backbone, full_model_for_export, is_hrnet
from .errors import UserError
from .timm_cfg import pretrained_cfg_for

CARDS_DIR = Path(__file__).resolve().parents[1] / "hub_cards"
METHOD_NAMES = {"layermatch": "LayerMatch", "ghfeat": "GH-Feat"}
METHOD_REFS = {
    "layermatch": "Galeev et al., Learning High-Resolution Domain-Specific Representations with a GAN Generator, §3.1",
    "ghfeat": "Xu et al., Generative Hierarchical Features from Synthesizing Images, CVPR 2021",
}
CITATIONS = """- LayerMatch: Galeev, Sofiiuk, Rukhovich, Romanov, Barinova, Konushin. *Learning High-Resolution Domain-Specific Representations with a GAN Generator.*
- GH-Feat: Xu, Shen, Zhu, Yang, Zhou. *Generative Hierarchical Features from Synthesizing Images.* CVPR 2021.
- StyleGAN2: Karras et al. *Analyzing and Improving the Image Quality of StyleGAN.* CVPR 2020."""


def versions() -> dict[str, str]:
    return {"genbackbones": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def backbone_state_from_checkpoint(checkpoint: Path, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone's weights from an accelerate checkpoint (the trained model is `model.safetensors`)."""
    path = Path(checkpoint) / "model.safetensors"
    if not path.exists():
        raise UserError(f"{path} is missing; the run has no complete checkpoint to export")
    try:
        state = safetensors.torch.load_file(str(path))
    except Exception as err:
        raise UserError(f"{path} is unreadable ({err}); the checkpoint is truncated — resume or re-run") from None
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def export_backbone(features: torch.nn.Module, spec: BackboneSpec, out: Path, *, input_size: int, mean, std,
                    license: str, provenance: dict, card: dict, overwrite: bool = True,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write the export folder atomically and check it loads back in timm with identical features."""
    full = full_model_for_export(spec, features)
    cfg = {
        "architecture": spec.arch.split(".")[0],
        "num_classes": 0,
        "num_features": int(getattr(full, "num_features", 0)),
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg_for(spec.arch, input_size, mean, std, license, provenance["method"]),
        "genbackbones": provenance,
    }
    with atomic.directory(out, overwrite=overwrite) as tmp:
        state = {k: v.detach().contiguous() for k, v in full.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "README.md").write_text(render_card(cfg, card))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        verify_export(tmp, features, spec, input_size)
    return Path(out)


@torch.no_grad()
def verify_export(folder: Path, features: torch.nn.Module, spec: BackboneSpec, input_size: int) -> None:
    """Load the folder through timm's local-dir path and require identical features."""
    from .backbones import feature_kwargs

    timm_logger = logging.getLogger("timm.models._builder")
    level = timm_logger.level
    timm_logger.setLevel(logging.ERROR)  # HRNet features_only warns about the unused head weights
    try:
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True, **feature_kwargs(spec)).eval()
    finally:
        timm_logger.setLevel(level)
    was_training = features.training
    features.eval()
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        for a, b in zip(features(x), loaded(x)):
            if not torch.equal(a, b):
                raise RuntimeError(f"export check failed: features differ by {(a - b).abs().max():.3e}")
    finally:
        features.train(was_training)


def card_data(cfg: dict, card: dict) -> ModelCardData:
    prov = cfg["genbackbones"]
    license = cfg["pretrained_cfg"]["license"]
    known = license.lower() in {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "bsd-3-clause"}
    data = dict(
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        license=license.lower() if known else "other",
        tags=["genbackbones", prov["method"], "image-feature-extraction", "timm"] + card.get("tags", []),
        eval_results=card.get("eval_results") or None,
        model_name=card.get("model_name") or (f"{cfg['architecture']}.{prov['method']}" if card.get("eval_results")
                                              else None),
    )
    if not known:
        data["license_name"] = license.lower().replace(" ", "-")[:60] or "unknown"
    if card.get("base_model"):
        data["base_model"] = card["base_model"]
    if card.get("datasets"):
        data["datasets"] = card["datasets"]
    return ModelCardData(**{k: v for k, v in data.items() if v is not None})


def render_card(cfg: dict, card: dict) -> str:
    """README.md from hub_cards/backbone.md.j2 through huggingface_hub's ModelCard."""
    prov = cfg["genbackbones"]
    pcfg = cfg["pretrained_cfg"]
    arch = cfg["architecture"]
    gen = prov.get("generator", {})
    template = CARDS_DIR / "backbone.md.j2"
    if not template.exists():
        raise UserError(f"card template {template} is missing; reinstall genbackbones from its repository")
    kwargs = dict(
        title=card.get("title") or f"{arch} · {METHOD_NAMES.get(prov['method'], prov['method'])}",
        arch=arch,
        method_name=METHOD_NAMES.get(prov["method"], prov["method"]),
        method_ref=METHOD_REFS.get(prov["method"], ""),
        generator_desc=gen.get("description") or gen.get("source", "unknown"),
        generator_sha256=gen.get("sha256") or "unknown",
        init=prov.get("backbone", {}).get("init", "random"),
        input_size=pcfg["input_size"][-1],
        mean=tuple(pcfg["mean"]),
        std=tuple(pcfg["std"]),
        steps=prov.get("steps"),
        images_per_step=prov.get("images_per_step"),
        taps=", ".join(f"`{t}`" for t in prov.get("taps", [])) or "-",
        compute=prov.get("compute", "-"),
        versions=" / ".join(prov.get("versions", {}).get(k, "?") for k in ("genbackbones", "torch", "timm")),
        has_recipe=bool(prov.get("recipe")),
        load_name=card.get("load_name", "local-dir:<this folder>  # or hf-hub:org/name"),
        feature_kwargs=", feature_location=''" if is_hrnet(arch) else "",
        is_hrnet=is_hrnet(arch),
        eval_rows=card.get("eval_rows", []),
        limitations=card.get("limitations") or _default_limitations(gen),
        citations=CITATIONS,
    )
    return str(ModelCard.from_template(card_data(cfg, card), template_path=str(template), **kwargs))


def _default_limitations(gen: dict) -> str:
    lines = ["- Trained only on images drawn from the generator: it inherits the generator's domain and its "
             "biases, and is not a general-purpose feature extractor."]
    if gen.get("trained") is False:
        lines.append("- **The generator was randomly initialised (not trained)**: these weights demonstrate the "
                     "pipeline and are not useful features.")
    if gen.get("license"):
        lines.append(f"- Licence follows the generator's: {gen['license']}.")
    return "\n".join(lines)


def export_run(run_dir: Path, out: Path | None = None, card: dict | None = None) -> Path:
    """Export the latest checkpoint of a run (LayerMatch or GH-Feat) to `<run>/export` or `out`."""
    from .recipes import dump_recipe, load_recipe
    from .training import latest_checkpoint

    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.exists():
        raise UserError(f"{run_dir} is not a genbackbones run (no recipe.yaml); pass a run folder from `pretrain`")
    recipe = load_recipe(recipe_path)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise UserError(f"{run_dir} has no complete checkpoint yet; train it first (genbackbones pretrain --resume {run_dir})")
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    spec = BackboneSpec(**{k: (tuple(v) if k == "out_indices" and v is not None else v)
                           for k, v in asdict(recipe.backbone).items()})
    features = _features_with_random_init(spec)
    state = backbone_state_from_checkpoint(checkpoint)
    missing, unexpected = features.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {checkpoint} does not match backbone {spec.arch}: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    provenance = {
        "method": recipe.method,
        "recipe": json.loads(json.dumps(asdict(recipe))),
        "backbone": asdict(recipe.backbone),
        "generator": run_info.get("generator", {"source": recipe.generator.source}),
        "steps": step,
        "images_per_step": recipe.train.batch_size * recipe.train.grad_accum * run_info.get("num_processes", 1),
        "taps": run_info.get("taps", []),
        "compute": run_info.get("compute", "-"),
        "versions": versions(),
    }
    mean_std = run_info.get("mean_std") or [[0.5] * 3, [0.5] * 3]
    license = recipe.license or provenance["generator"].get("license") or "other"
    card = dict(card or {})
    evaluation = _load_evaluation(run_dir)
    card.setdefault("eval_results", evaluation.get("eval_results"))
    card.setdefault("eval_rows", evaluation.get("rows", []))
    card.setdefault("model_name", evaluation.get("model_name") or run_dir.name)
    return export_backbone(features, spec, out or run_dir / "export", input_size=run_info.get("resolution", 64),
                           mean=mean_std[0], std=mean_std[1], license=license, provenance=provenance, card=card,
                           extra_files={"recipe.yaml": dump_recipe(recipe)})


def _features_with_random_init(spec: BackboneSpec) -> torch.nn.Module:
    """The architecture without downloading anything (weights come from the checkpoint)."""
    return create_backbone(BackboneSpec(**{**asdict(spec), "init": "random"}))


def _load_evaluation(run_dir: Path) -> dict:
    """Model-index entries written by `genbackbones evaluate` into the run, if any."""
    path = Path(run_dir) / "evaluation" / "model_index.json"
    if not path.exists():
        return {}
    from huggingface_hub import EvalResult

    data = json.loads(path.read_text())
    return {"eval_results": [EvalResult(**r) for r in data.get("eval_results", [])], "rows": data.get("rows", [])}
