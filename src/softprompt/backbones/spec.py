"""The backbone families, written down once: names, vision settings, HF model types, module.

This table is the config layer's (it imports no torch), so `model.family` is validated
against it and `backbones/loading.py` imports only the family module a run needs. A
family module registers its class in `BACKBONES` under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.registry import Registry

__all__ = ["FAMILIES", "FamilySpec", "family_names", "family_specs", "register_family"]


@dataclass(frozen=True)
class FamilySpec:
    """One backbone family.

    Attributes:
        name: the `model.family` value and `BACKBONES` name.
        module: the module whose import registers its backbone class.
        vision: it takes the vision settings (placement, encoder, projection, cache).
        model_types: the checkpoint `config.model_type` values detected as this family
            (the text families are detected from the config's shape instead).
        methods: the only methods it trains, for a family no general method fits (CLIP
            learns class prompts); () takes every method not tied to other families.
    """

    name: str
    module: str
    vision: bool = False
    model_types: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()


FAMILIES: Registry[FamilySpec] = Registry("backbone family")
_ORDER: list[str] = []  # registration order: `model.family`'s choices are listed in it


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to the table.

    Raises:
        ValueError: the name, or one of its model types, is taken already.
    """
    for other in family_specs():
        clash = set(spec.model_types) & set(other.model_types)
        if clash and other.name != spec.name:
            raise ValueError(f"model type {sorted(clash)[0]!r} is already family {other.name!r}")
    FAMILIES.register(spec.name)(spec)
    _ORDER.append(spec.name)
    return spec


def family_specs() -> tuple[FamilySpec, ...]:
    """Every family, in registration order."""
    return tuple(FAMILIES.get(name) for name in _ORDER)


def family_names() -> tuple[str, ...]:
    """The `model.family` values."""
    return tuple(_ORDER)


_BACKBONES = "softprompt.backbones."
for _spec in (
    FamilySpec("causal_lm", _BACKBONES + "causal_lm"),
    FamilySpec("seq2seq", _BACKBONES + "seq2seq"),
    FamilySpec("composed", _BACKBONES + "composed", vision=True),
    FamilySpec("blip2", _BACKBONES + "blip2", vision=True, model_types=("blip-2",)),
    FamilySpec("instructblip", _BACKBONES + "blip2", vision=True, model_types=("instructblip",)),
    FamilySpec(
        "clip",
        _BACKBONES + "clip",
        vision=True,
        model_types=("clip", "siglip"),
        methods=("coop", "cocoop"),
    ),
):
    register_family(_spec)
