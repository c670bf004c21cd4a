"""The registry of healing kinds: each kind registered once with what it does and which settings reach it.

Modelled on lm-eval's registry (lm_eval/api/registry.py: `register_model("name")` fills one name -> entry
table that every lookup goes through). The schema's `replacements`/`healing` enums, the Snakefile's `healing`
wildcard, the plan arithmetic (pruning/plans.py), the healing job (job.py, heal.py) and the settings each `replace`
job gets (rules/common.smk) all read this table.

One name per concept, in the config, the code, the records and all.csv: a *healing* is a registered kind's name
(config `healing:` and `replacements:` entries, the `{healing}` wildcard, plan.json / compressed.json / all.csv
`healing`); its *kind* is this registry's entry (HealingKind); its *module* is what it puts in place of the window
(modules.py, recorded as `module`); a *replacement* is a kind listed under the config's `replacements:`, which the
healing group `replacement` expands to (requested_kinds: the one place the two config keys are mapped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamline.healing import modules
from streamline.healing.modules import MODULES
from streamline.healing.recipes import OFFICIAL

TRAINS = ("pairs", "lm", "fit")  # MSE on cached pairs | next-token loss in the pruned model | closed-form fit
# The closed-form fits over calibration states (fit.py): ReplaceMe's linear map by least squares or by Adam on the
# cosine distance (replaceme.py), LinearPatch's Hadamard channel scales (linear_patch.py). No training loop.
# Each with the module its kind stores: None (the map is fused into the layer before the window) or `linear`.
FITS: dict[str, str | None] = {"replaceme-lstsq": None, "replaceme-cosine": None, "linearpatch": "linear"}
# The `training` keys a fit reads: its data (the same split as every trained healing, so pairs are shared) and the
# forward batch size; the optimiser settings never reach it, so changing them re-runs no fit. (`training.recipe`
# reaches every kind with an official recipe when it is not the default: rules/common.smk training_settings.)
FIT_TRAINING_KEYS = (
    "dataset", "samples", "val_samples", "seq_len", "seed", "batch_size", "shard_sequences", "scratch_dir"
)
INITS = ("setting", "best_fit")  # the start layer follows training.init_layer | is always the best-fitting one
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # a variant folder is {method}-{healing}


def layer_modules() -> list[str]:
    """The modules copied from one pruned layer (the start-layer rules apply to them)."""
    return [name for name, module in MODULES.items() if module.copies_layer]


@dataclass(frozen=True)
class HealingKind:
    """One healing kind.

    `module`: what it puts in place of the window (modules.MODULES), None when it puts nothing (none, lora,
    replaceme). `trains`: how it trains (TRAINS), None when it does not. `init`: how the start layer of a
    layer-copied module is chosen (INITS). `replacement`: listed under `replacements:` (config `healing:
    [replacement]`) rather than named in `healing:` itself. `lora`: reads the `lora:` settings. `fit`: the
    closed-form fit (FITS) of a kind that `trains` by "fit". `last_layers`: with the LM loss and no module,
    fine-tune the last k kept layers, the final norm and the LM head (last_layers.py) instead of LoRA.
    `official`: the entry of recipes.OFFICIAL (its method's official loop or calibration size) that
    `training.recipe: official` gives it; None: it trains the project's way under either recipe.
    """

    name: str
    module: str | None = None
    trains: str | None = None
    init: str | None = None
    replacement: bool = True
    lora: bool = False
    fit: str | None = None
    last_layers: int | None = None
    official: str | None = None

    @property
    def window(self) -> bool:
        """Needs one window of consecutive removed layers (its module takes their place, or a fit maps it)."""
        return self.module is not None or self.fit is not None

    @property
    def decoder_layer(self) -> bool:
        """Stored as one decoder layer in place of the window (linear/ffn are stored beside the weights)."""
        return self.module is not None and modules.get(self.module).decoder_layer

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
    if kind.trains == "lm" and kind.module not in (None, "layer"):  # lm.py: LoRA, last layers or lm-loss
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
    if kind.init is not None and (kind.init not in INITS or kind.module not in layer_modules()):
        raise ValueError(
            f"healing kind {kind.name!r}: init {kind.init!r} needs a module of {', '.join(layer_modules())}"
        )
    if kind.official is not None and kind.official not in OFFICIAL:
        raise ValueError(
            f"healing kind {kind.name!r}: official {kind.official!r} is unknown; allowed: {', '.join(OFFICIAL)}"
        )
    if kind.official is not None and (OFFICIAL[kind.official].calibration is not None) != (kind.trains == "fit"):
        raise ValueError(f"healing kind {kind.name!r}: official {kind.official!r} is a calibration size for fits "
                         "only, a loop for trained kinds only")
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
register(HealingKind("linear", module="linear", trains="pairs", official="streamline-mse"))
register(HealingKind("ffn", module="ffn", trains="pairs", official="streamline-mlp"))
register(HealingKind("swiglu", module="swiglu", trains="pairs", init="setting", official="streamline-mse"))
register(HealingKind("layer", module="layer", trains="pairs", init="setting", official="streamline-mse"))
# The same modules started from the window layer with the lowest untrained validation MSE: own variants and rows.
register(HealingKind("swiglu-bestfit", module="swiglu", trains="pairs", init="best_fit", official="streamline-mse"))
register(HealingKind("layer-bestfit", module="layer", trains="pairs", init="best_fit", official="streamline-mse"))
# peft LoRA on the pruned model (lm.py) and the official code's end-to-end `lm-loss` (the `layer` module
# trained inside the pruned model with the language-modelling loss).
register(HealingKind("lora", trains="lm", replacement=False, lora=True))
register(
    HealingKind("lm-loss", module="layer", trains="lm", init="setting", replacement=False, official="streamline-lm")
)
# The 2025 peers (README, "2025 peers"): ReplaceMe's map fused into the MLP before the window (stock checkpoint;
# needs a window that starts at layer 1 or later), LinearPatch's Hadamard patch (stored as the `linear` extra,
# d^2 parameters, as the official hook is not foldable into a stock Llama), and the last 3 kept layers, final norm
# and LM head fine-tuned with the LM loss (Navigation-LLM-layer-pruning, `--partial_layer_name last3`; any method).
register(HealingKind("replaceme", trains="fit", fit="replaceme-lstsq", replacement=False,
                     official="replaceme-calibration"))
register(HealingKind("replaceme-cosine", trains="fit", fit="replaceme-cosine", replacement=False,
                     official="replaceme-calibration"))
register(HealingKind("linearpatch", module="linear", trains="fit", fit="linearpatch", replacement=False,
                     official="linearpatch-calibration"))
register(HealingKind("last-layers", trains="lm", replacement=False, last_layers=3, official="partial-fine-tuning"))
