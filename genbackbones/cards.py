"""Model cards (README.md) for exported backbones and for generators: the one place cards are rendered.

Templates live in `genbackbones/assets/hub_cards/` (jinja2, shipped with the
package; `hub_cards/` at the top of the repository is a link to them) and go
through huggingface_hub's `ModelCard`, which writes the metadata block the Hub
reads (licence, tags, model-index). What differs between methods (name,
reference, BibTeX, a one-line summary) comes from the method registry, so a new
method needs no change here.

A card's usage snippet is the same line the CLI prints (`export.load_line`), so
what a user copies from a card is what the tests execute.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from .errors import UserError
from .offline import HUB_PREFIX

LOCAL_PREFIX = "local-dir:"

CARDS_DIR = Path(__file__).resolve().parent / "assets" / "hub_cards"
BACKBONE_TEMPLATE = CARDS_DIR / "backbone.md.j2"
GENERATOR_TEMPLATE = CARDS_DIR / "generator.md.j2"
HUB_LICENSES = frozenset({"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
                          "cc-by-nc-sa-4.0", "openrail"})
STYLEGAN2_BIBTEX = """@inproceedings{karras2020stylegan2,
  title     = {Analyzing and Improving the Image Quality of {StyleGAN}},
  author    = {Karras, Tero and Laine, Samuli and Aittala, Miika and Hellsten, Janne and Lehtinen, Jaakko and
               Aila, Timo},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2020}
}"""
STYLEGAN2_ADA_BIBTEX = """@inproceedings{karras2020ada,
  title     = {Training Generative Adversarial Networks with Limited Data},
  author    = {Karras, Tero and Aittala, Miika and Hellsten, Janne and Laine, Samuli and Lehtinen, Jaakko and
               Aila, Timo},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020}
}"""
STYLEGAN3_BIBTEX = """@inproceedings{karras2021alias,
  title     = {Alias-Free Generative Adversarial Networks},
  author    = {Karras, Tero and Aittala, Miika and Laine, Samuli and H{\\"a}rk{\\"o}nen, Erik and Hellsten, Janne and
               Lehtinen, Jaakko and Aila, Timo},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}"""
# generator.json "class" -> how cards name the family and where NVIDIA's constructor lives
GENERATOR_FAMILIES = {"stylegan2": ("StyleGAN2", "stylegan2-ada-pytorch `training/networks.py`"),
                      "stylegan3": ("StyleGAN3", "stylegan3 `training/networks_stylegan3.py`")}


def load_line(name: str | Path) -> str:
    """The exact timm call for an export: a folder (-> `local-dir:<absolute path>`) or an `hf-hub:` id."""
    text = str(name)
    if not text.startswith((HUB_PREFIX, LOCAL_PREFIX)):
        text = f"{LOCAL_PREFIX}{Path(text).resolve()}"
    return f"timm.create_model('{text}', pretrained=True, features_only=True)"


def generator_load_line(repo_id: str) -> str:
    """The Python line that opens a generator repo on the Hub (what `push` and `info` print)."""
    return f"genbackbones.open_generator('{HUB_PREFIX}{repo_id}')"


def license_fields(license: str) -> dict[str, str]:
    """Card metadata for a licence: a Hub licence id, or `other` with a slug `license_name`."""
    slug = re.sub(r"[^a-z0-9.]+", "-", (license or "").strip().lower()).strip("-")
    if slug in HUB_LICENSES:
        return {"license": slug}
    return {"license": "other", "license_name": slug[:60] or "unknown"}


def _template(path: Path) -> str:
    if not path.exists():
        raise UserError(f"card template {path} is missing; reinstall genbackbones")
    return str(path)


# ----------------------------------------------------------------------------- backbones


def backbone_card(config: dict, load_line: str, card: dict | None = None) -> str:
    """README.md of a backbone export from its config.json (and the evaluation / zoo facts in `card`).

    `load_line` is the exact timm call for this copy of the weights (`local-dir:` or `hf-hub:`).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .methods import get_method

    card = dict(card or {})
    prov = config["genbackbones"]
    pcfg = config["pretrained_cfg"]
    arch = config["architecture"]
    method = get_method(prov["method"])
    text = method.card_text(prov.get("recipe") or {})
    gen = prov.get("generator") or {}
    data = dict(library_name="timm", pipeline_tag="image-feature-extraction",
                tags=["genbackbones", prov["method"], "image-feature-extraction", "timm"] + card.get("tags", []),
                eval_results=card.get("eval_results") or None,
                model_name=card.get("model_name") or (f"{arch}.{prov['method']}" if card.get("eval_results") else None),
                base_model=card.get("base_model"), datasets=card.get("datasets"), **license_fields(pcfg["license"]))
    kwargs = dict(
        title=card.get("title") or f"{arch} · {text['display_name']}",
        arch=arch,
        method_name=text["display_name"],
        method_ref=text["reference"],
        summary=text["card_summary"],
        uses_generator=bool(gen),
        generator_desc=gen.get("description") or gen.get("source") or "-",
        generator_sha256=gen.get("sha256") or "-",
        data_desc=prov.get("data") or "-",
        init=(prov.get("backbone") or {}).get("init", "random"),
        input_size=pcfg["input_size"][-1],
        mean=tuple(pcfg["mean"]),
        std=tuple(pcfg["std"]),
        interpolation=pcfg.get("interpolation", "bicubic"),
        steps=prov.get("steps"),
        images_per_step=prov.get("images_per_step"),
        images_seen=prov.get("images_seen") or "-",
        taps=", ".join(f"`{t}`" for t in prov.get("taps", [])) or "-",
        compute=prov.get("compute", "-"),
        versions=" / ".join(prov.get("versions", {}).get(k, "?") for k in ("genbackbones", "torch", "timm")),
        has_recipe=bool(prov.get("recipe")),
        load_line=load_line,
        load_name=load_line.split("'")[1],
        levels=", ".join(str(c) for c in prov.get("feature_channels", [])) or "-",
        model_args=json.dumps(config.get("model_args", {})),
        pooled_model=not config.get("model_args", {}).get("feature_location") == "",
        eval_rows=card.get("eval_rows", []),
        limitations=card.get("limitations") or _limitations(gen),
        citations="\n\n".join(b for b in (text["bibtex"], STYLEGAN2_BIBTEX if gen else "") if b),
    )
    metadata = ModelCardData(**{k: v for k, v in data.items() if v is not None})
    return str(ModelCard.from_template(metadata, template_path=_template(BACKBONE_TEMPLATE), **kwargs))


def _limitations(gen: dict) -> str:
    lines = []
    if gen:
        lines.append("- Trained only on images drawn from the generator: it inherits the generator's domain and its "
                     "biases, and is not a general-purpose feature extractor.")
        if gen.get("trained") is False:
            lines.append("- **The generator was randomly initialised (not trained)**: these weights demonstrate the "
                         "pipeline and are not useful features.")
        if gen.get("license"):
            lines.append(f"- Licence follows the generator's: {gen['license']}.")
    else:
        lines.append("- Trained only on the images named above: it inherits their domain and biases, and is not a "
                     "general-purpose feature extractor.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generators


def generator_card(meta: dict, folder: Path, repo_id: str, tags: list[str] | None = None) -> str:
    """README.md for a generator repo in our format."""
    from huggingface_hub import ModelCard, ModelCardData

    from .generators.formats.folder import D_FILE, G_FILE

    g = meta["G_init_kwargs"]
    license = meta["license"]
    has_d = (folder / D_FILE).is_file()
    load_name = f"hf-hub:{repo_id}"
    family_key = meta.get("class", "stylegan2")
    family, nvidia_module = GENERATOR_FAMILIES[family_key]
    data = ModelCardData(pipeline_tag="unconditional-image-generation",
                         tags=["genbackbones", family_key, "gan", *(tags or [])], **license_fields(license))
    kwargs = dict(
        title=f"{family} {g.get('img_resolution')} px · {repo_id.split('/')[1]}", family=family,
        nvidia_module=nvidia_module,
        source=meta.get("source") or "unknown", source_sha256=meta.get("source_sha256") or "unknown",
        network=meta.get("network", "G_ema"), w_avg=meta.get("w_avg", "source"), license_text=license,
        created_by=meta.get("created_by", "genbackbones"), resolution=g.get("img_resolution"),
        img_channels=g.get("img_channels", 3), z_dim=g.get("z_dim"), w_dim=g.get("w_dim"), c_dim=g.get("c_dim", 0),
        mapping_layers=(g.get("mapping_kwargs") or {}).get("num_layers", 8),
        g_params=_millions(_count_values(folder / G_FILE)),
        d_params=_millions(_count_values(folder / D_FILE)) if has_d else "-",
        has_discriminator=has_d, load_name=load_name, license_note=_license_note(license),
        citations=f"{STYLEGAN2_BIBTEX}\n\n{STYLEGAN2_ADA_BIBTEX}" + (
            f"\n\n{STYLEGAN3_BIBTEX}" if family_key == "stylegan3" else ""),
    )
    return str(ModelCard.from_template(data, template_path=_template(GENERATOR_TEMPLATE), **kwargs))


def _license_note(license: str) -> str:
    note = (f"The weights follow the licence of the original checkpoint: **{license}**. Backbones that genbackbones "
            "pretrains against this generator carry the same licence in their cards.")
    if re.search(r"(^|[^a-z])nc($|[^a-z])|non-?commercial", license.lower()):
        note += " It allows **non-commercial** use only."
    return note


def _count_values(path: Path) -> int:
    """Number of tensor values in a safetensors file, from its header alone (no torch, no full read)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M (parameters and buffers)"
