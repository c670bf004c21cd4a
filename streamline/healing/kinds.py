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
TRAINS = ("pairs", "lm", "fit")  # MSE on cached pairs | next-token loss in the pruned model | closed-form fit
# The closed-form fits over calibration states (fit.py): ReplaceMe's linear map by least squares or by Adam on the
# cosine distance (replaceme.py), LinearPatch's Hadamard channel scales (linear_patch.py). No training loop.
# Each with the module its kind stores: None (the map is fused into the layer before the window) or `linear`.
FITS: dict[str, str | None] = {"replaceme-lstsq": None, "replaceme-cosine": None, "linearpatch": "linear"}
# The `training` keys a fit reads: its data (the same split as every trained healing, so pairs are shared) and the
# forward batch size; the optimiser settings never reach it, so changing them re-runs no fit.
FIT_TRAINING_KEYS = (
    "dataset", "samples", "val_samples", "seq_len", "seed", "batch_size", "shard_sequences", "scratch_dir"
)
INITS = ("setting", "best_fit")  # the start layer follows training.init_layer | is always the best-fitting one
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # a variant folder is {method}-{healing}


@dataclass(frozen=True)
class HealingKind:
    """One healing kind.

    `module`: what it puts in place of the window (MODULES), None when it puts nothing (none, lora, replaceme).
    `trains`: how it trains (TRAINS), None when it does not. `init`: how the start layer of a layer-copied
    module is chosen (INITS). `replacement`: listed under `replacements:` (config `healing: [replacement]`)
    rather than named in `healing:` itself. `lora`: reads the `lora:` settings. `fit`: the closed-form fit
    (FITS) of a kind that `trains` by "fit". `last_layers`: with the LM loss and no module, fine-tune the last
    k kept layers, the final norm and the LM head (last_layers.py) instead of LoRA.
    """

    name: str
    module: str | None = None
    trains: str | None = None
    init: str | None = None
    replacement: bool = True
    lora: bool = False
    fit: str | None = None
    last_layers: int | None = None

    @property
    def window(self) -> bool:
        """Needs one window of consecutive removed layers (its module takes their place, or a fit maps it)."""
        return self.module is not None or self.fit is not None

    @property
    def decoder_layer(self) -> bool:
        """Stored as one decoder layer in place of the window (linear/ffn are stored beside the weights)."""
        return self.module in LAYER_MODULES

    @property
    def settings(self) -> tuple[str, ...]:
        """The config settings its `replace` job gets: `training` (without `init_layer` unless listed), `lora`;
        a fit gets `training_data`, only the FIT_TRAINING_KEYS of `training`."""
        uses = ("training_data",) if self.trains == "fit" else ("training",) if self.trains else ()
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
    if (kind.trains == "fit") != (kind.fit is not None) or (kind.fit is not None and kind.fit not in FITS):
        raise ValueError(f"healing kind {kind.name!r}: trains 'fit' needs a fit of {', '.join(FITS)} (and only it)")
    if kind.fit is not None and kind.module != FITS[kind.fit]:  # fit.py: a fused map, or the patch as `linear`
        stored = FITS[kind.fit]
        raise ValueError(f"healing kind {kind.name!r}: fit {kind.fit!r} stores module {stored}, not {kind.module}")
    if kind.last_layers is not None and (kind.trains != "lm" or kind.module is not None or kind.lora):
        raise ValueError(f"healing kind {kind.name!r}: last_layers needs trains 'lm', no module and no lora")
    if kind.trains == "lm" and kind.module is None and not kind.lora and kind.last_layers is None:
        raise ValueError(f"healing kind {kind.name!r}: the LM loss without a module trains lora or last_layers")
    if kind.last_layers is not None and kind.last_layers < 1:
        raise ValueError(f"healing kind {kind.name!r}: last_layers {kind.last_layers} must be at least 1")
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
# The 2025 peers (README, "2025 peers"): ReplaceMe's map fused into the MLP before the window (stock checkpoint;
# needs a window that starts at layer 1 or later), LinearPatch's Hadamard patch (stored as the `linear` extra,
# d^2 parameters, as the official hook is not foldable into a stock Llama), and the last 3 kept layers, final norm
# and LM head fine-tuned with the LM loss (Navigation-LLM-layer-pruning, `--partial_layer_name last3`; any method).
register(HealingKind("replaceme", trains="fit", fit="replaceme-lstsq", replacement=False))
register(HealingKind("replaceme-cosine", trains="fit", fit="replaceme-cosine", replacement=False))
register(HealingKind("linearpatch", module="linear", trains="fit", fit="linearpatch", replacement=False))
register(HealingKind("last-layers", trains="lm", replacement=False, last_layers=3))
