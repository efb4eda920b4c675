"""One registration per tuning method: the `TunerSpec` and the table of them.

Every table that lists methods (build order, adapter names, the `method:` sections of a
run config, `softprompt compare`'s presets) is derived from these specs, so adding a
method means adding one folder under `softprompt/tuners/` whose `spec.py` defines
`SPEC = TunerSpec(...)`. The folders are found with pkgutil the first time the table is
read; their spec modules import pydantic settings only (this module is the config
layer's), and the tuner code named by `TunerSpec.module` is imported only when a
`TunerSet` is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from softprompt.registry import Registry

__all__ = [
    "TUNER_SPECS",
    "ComparePreset",
    "TunerSpec",
    "family_method_problem",
    "register_tuner_spec",
    "tuner_specs",
]


@dataclass(frozen=True)
class ComparePreset:
    """One row of `softprompt compare`: which methods train, every other one switched off.

    Attributes:
        name: the `--methods` name ("prompt", "prompt+lora", ...).
        rank: its place in the list of presets (`--methods` choices are shown in it).
        enable: the YAML names of the methods it switches on.
        overrides: further `key=value` overrides; they win over every spec's
            `compare_defaults`.
    """

    name: str
    rank: int
    enable: tuple[str, ...]
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class TunerSpec:
    """Everything the engine needs to know about one method, written down once.

    Attributes:
        name: the YAML and registry name ("lora"); with `settings`, the run config's
            `method.<name>` section.
        order: build order, which is also the optimizer's group order: checkpoints rely
            on it (prompt first, then the backbone's extras), so a new method takes a
            free number rather than renumbering.
        module: the module that registers its builder in `TUNERS` and its saved-adapter
            loaders in `SAVED_TUNERS` (imported when a `TunerSet` is built).
        settings: the pydantic class of its `method.<name>` section (it must have an
            `enabled` switch); None for parts the backbone owns (projection).
        adapter: its directory in an adapter bundle ("prompt"); "" when it is saved with
            the backbone's state instead.
        aliases: further names users switch it by (CLI flags); its adapter and YAML
            names always count.
        saved: the adapter methods of a bundle its loaders read.
        presets: the `softprompt compare` rows it brings.
        compare_defaults: `key=value` overrides every compare row sets unless the row
            says otherwise (so a config's own choice never leaks into a row).
        conflicts: (other method, why) pairs that cannot be enabled together with it.
        check: further validation of the whole `method` section (raises ValueError).
        families: the backbone families it is for (`FamilySpec.methods` lists it there);
            () for every family that takes general methods.
        replaces: methods it switches off by default: enabling it turns them off unless
            the config sets their `enabled` itself (CoOp replaces the soft prompt, which
            is on by default).
    """

    name: str
    order: int
    module: str
    settings: type[BaseModel] | None = None
    adapter: str = ""
    aliases: tuple[str, ...] = ()
    saved: tuple[str, ...] = ()
    presets: tuple[ComparePreset, ...] = ()
    compare_defaults: tuple[str, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()
    check: Callable[[Any], None] | None = None
    families: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()

    @property
    def switch_names(self) -> tuple[str, ...]:
        """Every name that switches this method's adapter (adapter, YAML name, aliases)."""
        if not self.adapter:
            return ()
        return tuple(dict.fromkeys((self.adapter, self.name, *self.aliases)))


TUNER_SPECS: Registry[TunerSpec] = Registry("tuning method")


def register_tuner_spec(spec: TunerSpec) -> TunerSpec:
    """Add a method to the table.

    Raises:
        ValueError: its name, build order, a switch name or a saved method is taken
            already, or its settings have no `enabled` switch.
    """
    if spec.settings is not None and "enabled" not in spec.settings.model_fields:
        raise ValueError(f"tuning method {spec.name!r}: its settings need an `enabled` field")
    for other in _registered():
        taken = {
            "build order": {spec.order} & {other.order},
            "switch name": set(spec.switch_names) & set(other.switch_names),
            "saved adapter method": set(spec.saved) & set(other.saved),
        }
        for what, clash in taken.items():
            if clash and other.name != spec.name:
                shown = ", ".join(map(str, sorted(clash)))
                raise ValueError(f"tuning method {spec.name!r}: {what} {shown} is {other.name!r}'s")
    return TUNER_SPECS.register(spec.name)(spec)


def _registered() -> list[TunerSpec]:
    return [TUNER_SPECS.get(name) for name in TUNER_SPECS.names()]


_discovered = False


def _discover() -> None:
    """Register the `SPEC` of every method folder under `softprompt.tuners` (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("softprompt.tuners")
    for info in pkgutil.iter_modules(package.__path__, "softprompt.tuners."):
        if not info.ispkg or importlib.util.find_spec(f"{info.name}.spec") is None:
            continue  # a helper package, not a method
        module = importlib.import_module(f"{info.name}.spec")
        register_tuner_spec(module.SPEC)


def tuner_specs() -> tuple[TunerSpec, ...]:
    """Every registered method, in build order."""
    _discover()
    return tuple(sorted(_registered(), key=lambda spec: spec.order))


def family_method_problem(family: str, methods: list[str]) -> str | None:
    """Why the enabled `methods` cannot train a `family` backbone (None: they can)."""
    from softprompt.backbones.spec import FAMILIES

    own = FAMILIES.get(family).methods
    for name in methods:
        spec = TUNER_SPECS.get(name)
        if spec.settings is None:
            continue  # a backbone's own part (projection), built by the family itself
        if own and name not in own:
            wanted = " or ".join(f"method.{m}" for m in own)
            return (
                f"a {family} model trains {wanted}; method.{name} is enabled"
                + (" (it is on by default)" if name == "prompt_tuning" else "")
                + f": set method.{name}.enabled: false and enable {wanted}"
            )
        if spec.families and family not in spec.families:
            return (
                f"method.{name} is for {' or '.join(spec.families)} models; this model is "
                f"a {family} model"
            )
    return None


def section_specs() -> tuple[TunerSpec, ...]:
    """The methods with a `method.<name>` section, in build order."""
    return tuple(spec for spec in tuner_specs() if spec.settings is not None)


# The trainable parts a backbone family builds itself (tuners/modules.py): no section of
# their own, saved with the backbone's state rather than as adapter directories.
for _name, _order in (("projection", 20), ("qformer_prompt", 30)):
    register_tuner_spec(TunerSpec(name=_name, order=_order, module="softprompt.tuners.modules"))
