"""The method registry: a recipe's `method:` names a module here, whose `METHOD` says how to run it.

A method is one module (or package) `genbackbones/methods/<name>.py` that defines
`METHOD = SomeMethod()`, a `Method` subclass. The registry finds it by that name,
so adding a method means adding that module and a recipe, nothing else: the run
skeleton (engine/runs.py), recipe loading, export, cards and the CLI ask the method
for what differs between methods and do the rest the same way for all of them.

What a method provides:
  section / config   the name and dataclass of its own recipe section (`layermatch:`)
  uses               the shared recipe sections it reads (`generator`, `backbone`, `data`, `train`);
                     `uses_for(recipe)` when that depends on the recipe (SSL reads `generator:` only
                     when its images come from the generator)
  prepare(recipe)    build and validate everything before a run folder exists; fill in derived values
  build(...)         models on the accelerator, optimisers, the loop's `Task`
  describe(...)      what run.json records about this run
  finish(...)        work at the end (save a generator, ...), main process only
and, for the cards of the backbones it exports, its display name, reference, BibTeX and a
one-line summary (`card_text(recipe)` when they depend on the recipe, as SSL's algorithm).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..errors import UserError

if TYPE_CHECKING:
    from accelerate import Accelerator

# genbackbones.recipes.Recipe and genbackbones.engine.loop.Task, not imported: recipes asks this registry for a
# method's section, and the loop sits above the recipes, so importing them here would close a circle
Recipe = Any
Task = Any


class Prepared:
    """What `Method.prepare` built: each method's own dataclass, handed back to its other calls."""

    find_unused_parameters: bool = False  # DDP: part of the model gets no gradient at every step


class Method:
    """How one pretraining method runs; subclasses fill in the class attributes and the four calls."""

    name: ClassVar[str]
    section: ClassVar[str | None] = None  # its own recipe section
    config: ClassVar[type | None] = None  # the dataclass of that section
    uses: ClassVar[tuple[str, ...]] = ("train",)  # shared recipe sections it reads
    command: ClassVar[str] = "pretrain"  # the CLI command that runs it
    exports_backbone: ClassVar[bool] = True  # `pretrain` ends with a timm export
    display_name: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # one line: authors, title, venue
    bibtex: ClassVar[str] = ""
    card_summary: ClassVar[str] = ""  # how the exported backbone was trained, for its card (one sentence)

    def uses_for(self, recipe: Mapping[str, Any]) -> tuple[str, ...]:
        """The shared sections a recipe of this method reads, given the recipe as plain data (a parsed YAML
        mapping, sections possibly absent); `uses` unless the method's inputs depend on the recipe."""
        return self.uses

    def card_text(self, recipe: Mapping[str, Any]) -> dict[str, str]:
        """What a backbone card says about the method (`display_name`, `reference`, `bibtex`, `card_summary`),
        given the run's recipe as plain data; the class attributes unless they depend on the recipe."""
        return {"display_name": self.display_name, "reference": self.reference, "bibtex": self.bibtex,
                "card_summary": self.card_summary}

    def prepare(self, recipe: Recipe, num_processes: int) -> Prepared:
        """Validate the recipe and build what the run needs, writing nothing; fill derived values into `recipe`."""
        raise NotImplementedError

    def build(self, prepared: Prepared, recipe: Recipe, accelerator: Accelerator) -> Task:
        """Models on the accelerator's device, optimisers and schedulers (through `accelerator.prepare`), the task."""
        raise NotImplementedError

    def describe(self, prepared: Prepared, recipe: Recipe) -> dict:
        """run.json fields of this run (generator provenance, taps, data, ...)."""
        return {}

    def banner(self, prepared: Prepared, recipe: Recipe) -> str:
        """The one line printed when a run starts (after the run folder)."""
        return recipe.method

    def hooks(self, task: Task, recipe: Recipe, run_dir: Path, accelerator: Accelerator) -> list[Callable[[int], None]]:
        """Per-step callbacks for the loop (e.g. periodic sample grids)."""
        return []

    def finish(self, task: Task, prepared: Prepared, recipe: Recipe, run_dir: Path) -> dict:
        """Work after the last step on the main process; returns extra run.json fields."""
        return {}


def method_names() -> list[str]:
    """Every method module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_method(name: str, source: str | None = None) -> Method:
    """The `METHOD` of `genbackbones.methods.<name>`; an unknown name is a UserError listing the methods."""
    where = f"{source}: " if source else ""
    if name not in method_names():
        raise UserError(f"{where}unknown method {name!r}; choose one of {', '.join(method_names())}")
    module = importlib.import_module(f"{__name__}.{name}")
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise UserError(f"{where}genbackbones.methods.{name} defines no METHOD; it is not a method")
    return method
