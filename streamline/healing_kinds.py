"""The registry of healing kinds: each kind registered once with what it does and which settings reach it.

Modelled on lm-eval's registry (lm_eval/api/registry.py: `register_model("name")` fills one name -> entry
table that every lookup goes through). The schema's `replacements`/`healing` enums, the Snakefile's `healing`
wildcard, the plan arithmetic (prune.py), the healing code (replace.py, healing.py) and the settings each
`replace` job gets (rules/common.smk) all read this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Modules a healing kind can put in place of the pruned window (replace.build_replacement builds them):
# linear (x + W x), ffn (the paper's FFN), swiglu (the model's MLP block with its norm), layer (a decoder layer).
MODULES = ("linear", "ffn", "swiglu", "layer")
LAYER_MODULES = ("swiglu", "layer")  # copied from one of the pruned layers; stored as a decoder layer
TRAINS = ("pairs", "lm")  # MSE on cached hidden-state pairs | next-token loss in the pruned model
INITS = ("setting", "best_fit")  # the start layer follows training.init_layer | is always the best-fitting one
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # a variant folder is {method}-{healing}


@dataclass(frozen=True)
class HealingKind:
    """One healing kind.

    `module`: what it puts in place of the window (MODULES), None when it puts nothing (none, lora).
    `trains`: how it trains (TRAINS), None when it does not. `init`: how the start layer of a layer-copied
    module is chosen (INITS). `replacement`: listed under `replacements:` (config `healing: [replacement]`)
    rather than named in `healing:` itself. `lora`: reads the `lora:` settings.
    """

    name: str
    module: str | None = None
    trains: str | None = None
    init: str | None = None
    replacement: bool = True
    lora: bool = False

    @property
    def window(self) -> bool:
        """Needs one window of consecutive removed layers (its module takes their place)."""
        return self.module is not None

    @property
    def decoder_layer(self) -> bool:
        """Stored as one decoder layer in place of the window (linear/ffn are stored beside the weights)."""
        return self.module in LAYER_MODULES

    @property
    def settings(self) -> tuple[str, ...]:
        """The config settings its `replace` job gets: `training` (without `init_layer` unless listed), `lora`."""
        uses = ("training",) if self.trains else ()
        uses += ("init_layer",) if self.init == "setting" else ()
        return uses + (("lora",) if self.lora else ())


HEALING_KINDS: dict[str, HealingKind] = {}


def register(kind: HealingKind) -> HealingKind:
    """Add `kind` to the registry (once); its fields are checked here, so a bad entry fails at import."""
    if kind.name in HEALING_KINDS:
        raise ValueError(f"healing kind {kind.name!r} is already registered")
    if not NAME.fullmatch(kind.name) or kind.name == "replacement":
        raise ValueError(f"healing kind name {kind.name!r} is not lower-case words joined by '-' (or is reserved)")
    if kind.module is not None and kind.module not in MODULES:
        raise ValueError(
            f"healing kind {kind.name!r}: module {kind.module!r} is unknown; allowed: {', '.join(MODULES)}"
        )
    if kind.trains is not None and kind.trains not in TRAINS:
        raise ValueError(f"healing kind {kind.name!r}: trains {kind.trains!r} is unknown; allowed: {', '.join(TRAINS)}")
    if kind.trains == "lm" and kind.module not in (None, "layer"):  # healing.run_healing: LoRA or lm-loss
        raise ValueError(f"healing kind {kind.name!r}: the LM loss trains no module or a `layer`, not {kind.module!r}")
    if kind.init is not None and (kind.init not in INITS or kind.module not in LAYER_MODULES):
        raise ValueError(f"healing kind {kind.name!r}: init {kind.init!r} needs a module of {', '.join(LAYER_MODULES)}")
    HEALING_KINDS[kind.name] = kind
    return kind


def get(name: str) -> HealingKind:
    """The registered kind `name`; an unknown name is one line naming it and the known ones."""
    if name not in HEALING_KINDS:
        raise ValueError(f"healing {name!r} is unknown; allowed: {', '.join(HEALING_KINDS)}")
    return HEALING_KINDS[name]


def replacement_names() -> list[str]:
    """The schema's `replacements` enum: the kinds healing `replacement` expands to."""
    return [name for name, kind in HEALING_KINDS.items() if kind.replacement]


def requested_kinds(healing: list[str], replacements: list[str]) -> list[str]:
    """The kinds a config asks for, in its order without repeats: `healing`, with the group `replacement`
    expanded to the `replacements` list."""
    asked = [kind for h in healing for kind in (replacements if h == "replacement" else [h])]
    return list(dict.fromkeys(asked))


def healing_choices() -> list[str]:
    """The schema's `healing` enum: none, the group `replacement`, and every kind that is not a replacement."""
    return ["none", "replacement", *(name for name, kind in HEALING_KINDS.items() if not kind.replacement)]


register(HealingKind("none"))
register(HealingKind("linear", module="linear", trains="pairs"))
register(HealingKind("ffn", module="ffn", trains="pairs"))
register(HealingKind("swiglu", module="swiglu", trains="pairs", init="setting"))
register(HealingKind("layer", module="layer", trains="pairs", init="setting"))
# The same modules started from the window layer with the lowest untrained validation MSE: own variants and rows.
register(HealingKind("swiglu-bestfit", module="swiglu", trains="pairs", init="best_fit"))
register(HealingKind("layer-bestfit", module="layer", trains="pairs", init="best_fit"))
# peft LoRA on the pruned model (healing.py) and the official code's end-to-end `lm-loss` (the `layer` module
# trained inside the pruned model with the language-modelling loss).
register(HealingKind("lora", trains="lm", replacement=False, lora=True))
register(HealingKind("lm-loss", module="layer", trains="lm", init="setting", replacement=False))
