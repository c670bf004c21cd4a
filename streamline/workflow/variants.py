"""Which work a config asks for and the keyed folder each job's outputs land in (README, "Experiments").

`Experiment(config, plugins)` answers everything rules/common.smk used to compute inline: the variant grids
(top level and `ablations`), their targets, the healing kinds each method allows, the variants
`{method}-{healing}/{target}/{key}`, and the settings dict every keyed job gets as `params:`. A folder's key is
`provenance.settings_key` of exactly that dict, so the key and the params cannot disagree; `keyed` refuses a path
whose key is not the current config's. The config is the validated one (schema defaults filled); `plugins` maps
each name a plugin registered (criterion or healing kind) to the plugin's identity (`plugins.plugin_identity`:
its entry and the sha256 of its code), which enters the keys of the jobs that import it, so editing a plugin
gives its variants new folders and re-runs exactly them.

Pure functions of their arguments (no Snakemake, no files read): tests/test_variants.py checks them directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from streamline.healing.kinds import FIT_TRAINING_KEYS, HEALING_KINDS, requested_kinds
from streamline.healing.recipes import DEFAULT_RECIPE
from streamline.provenance import settings_key
from streamline.pruning.criteria import CRITERIA, settings_of

# The keys of one variant grid (`ablations` entries name some of them; `scales` is `training.scales` at the top).
GRID_KEYS = ("methods", "sparsities", "prune_layers", "healing", "replacements", "scales")
KEY_RE = "[0-9a-f]{8}"  # a settings key in a path (provenance.KEY_HEX hex digits)
# Folder names of the pruning targets: s{sparsity} or l{layers} (target_tags).
TARGET_RE = "s[0-9]*\\.?[0-9]+|l[0-9]+"
# The evaluation steps (each its own rule and keyed folder) and the file of each that all.csv reads.
EVAL_FILES = {"accuracy": "accuracy.json", "perplexity": "ppl.json", "model_stats": "model_stats.json",
              "stability": "stability.json"}


def sparsity_tag(value: float) -> str:
    """0.25 -> '0.25' (the s{sparsity} folder name)."""
    return f"{float(value):g}"


def target_tags(grid: dict[str, Any]) -> list[str]:
    """The pruning targets' folder names of a grid: s{sparsity} for each of `sparsities`, l{n} for each of
    `prune_layers`."""
    return [f"s{sparsity_tag(s)}" for s in grid["sparsities"]] + [f"l{int(n)}" for n in grid["prune_layers"]]


def target_of(tag: str) -> dict[str, Any]:
    """A target folder name -> the plan's target: 's0.25' -> {"sparsity": 0.25}, 'l8' -> {"layers": 8}."""
    if tag.startswith("l"):
        return {"sparsity": None, "layers": int(tag[1:])}
    return {"sparsity": float(tag[1:]), "layers": None}


def healings_for(method: str, grid: dict[str, Any]) -> list[str]:
    """The healing kinds of a grid that apply to `method`, in config order: a kind that needs a window only for
    a criterion that removes one."""
    window = CRITERIA[method].window
    return [kind for kind in requested_kinds(grid["healing"], grid["replacements"])
            if window or not HEALING_KINDS[kind].window]


def training_scales(healing: str, grid: dict[str, Any]) -> list[float | None]:
    """The budgets a kind is trained at (the grid's scales); [None] for a kind that does not train."""
    return list(grid["scales"]) if HEALING_KINDS[healing].trains else [None]


def keyed(key: str, settings: Any, what: str) -> Any:
    """`settings` when they hash to the path's `key`; else one line (a path from another config's settings)."""
    if settings_key(settings) != key:
        raise ValueError(
            f"{what}: the folder key {key} is not the key of this config's settings ({settings_key(settings)}); "
            "its settings are in the folder's settings.json (README, \"Experiments\")"
        )
    return settings


@dataclass(frozen=True, eq=False)
class Experiment:
    """The variants and keyed settings of one validated config (module docstring)."""

    config: dict[str, Any]
    plugins: dict[str, Any] = field(default_factory=dict)  # registered name -> plugin identity

    # --- grids and targets ------------------------------------------------------------------------------------
    def grids(self) -> list[dict[str, Any]]:
        """The experiment's variant grids: the top-level one, then each `ablations` entry with the top level's
        value for every key it leaves out (naming sparsities or prune_layers leaves the other empty)."""
        config = self.config
        top = {key: config[key] for key in GRID_KEYS if key != "scales"} | {"scales": config["training"]["scales"]}
        out = [top]
        for entry in config["ablations"]:
            targets = {"sparsities": [], "prune_layers": []} if {"sparsities", "prune_layers"} & set(entry) else {}
            out.append(top | targets | entry)
        return out

    def search_targets(self) -> dict[str, Any]:
        """The largest sparsity and layer count a search method's order must reach (None where none is asked)."""
        grids = self.grids()
        return {
            "max_sparsity": max((s for grid in grids for s in grid["sparsities"]), default=None),
            "max_layers": max((n for grid in grids for n in grid["prune_layers"]), default=None),
            "sparsity_of": self.config["sparsity_of"],
        }

    # --- settings of each keyed job ------------------------------------------------------------------------------
    def run_settings(self) -> dict[str, Any]:
        """Settings every heavy step shares (dtype, device, data mirror)."""
        return {key: self.config[key] for key in ("dtype", "device", "data_mirror")}

    def plugin_ids(self, *names: str) -> list[Any]:
        """The identities of the plugins that registered these method / healing-kind names (each job imports them
        again, and checks that their code is the one keyed here)."""
        found = {}
        for name in names:
            if name in self.plugins:
                identity = self.plugins[name]
                found[identity["entry"] if isinstance(identity, dict) else identity] = identity
        return [found[entry] for entry in sorted(found)]

    def similarity_settings(self) -> dict[str, Any]:
        """What reaches the similarity job (and so every importance table of a model)."""
        return {"calibration": self.config["calibration"], "run": self.run_settings()}

    def importance_dir(self, model: str) -> str:
        """results/importance/{model}/{key}: pair similarities, the per-metric tables and heatmaps."""
        return f"results/importance/{model}/{settings_key(self.similarity_settings())}"

    def select_settings(self, method: str) -> dict[str, Any]:
        """What reaches a search method's select_layers job (the criterion's own config keys, e.g. `laco:`)."""
        criterion = CRITERIA[method]
        return {
            "search": self.config["search"],
            "calibration_dataset": self.config["calibration"]["dataset"],
            "settings": settings_of(criterion, self.config) if criterion.job == "select_layers" else {},
            "plugins": self.plugin_ids(method),
            "targets": self.search_targets(),
            "run": self.run_settings(),
        }

    def order_path(self, model: str, method: str) -> str:
        """results/importance/{model}/{key}/{method}_order.json: a search method's layer order."""
        return f"results/importance/{model}/{settings_key(self.select_settings(method))}/{method}_order.json"

    def scores_template(self, method: str) -> str | None:
        """The file a method's plan is made from, with `{model}` left open: its layer order (search criteria), the
        importance table its registry entry names, or None (last-n, random)."""
        criterion = CRITERIA[method]
        if criterion.kind == "search":
            return self.order_path("{model}", method)
        if criterion.metric is None:
            return None
        return f"{self.importance_dir('{model}')}/{criterion.metric}.csv"

    def training_settings(self, healing: str, scale: float | None) -> dict[str, Any]:
        """The `training` keys that reach a kind's replace job, with samples = scale x training.samples: none for a
        kind that does not train; only the data keys for a fit; `init_layer` only where the kind's start layer
        follows it; `recipe` only for a kind with an official recipe and only when not the default. A budget is its
        samples, so 2 x 64 and 1 x 128 share one variant."""
        training = self.config["training"]
        uses = HEALING_KINDS[healing].settings
        if "training" in uses:
            keys = [k for k in training if k != "init_layer" or "init_layer" in uses]
        elif "training_data" in uses:
            keys = [k for k in training if k in FIT_TRAINING_KEYS]
        else:
            return {}
        settings = {k: training[k] for k in keys if k not in ("scales", "recipe")}
        settings["samples"] = round(scale * training["samples"])
        if HEALING_KINDS[healing].official and training["recipe"] != DEFAULT_RECIPE:  # else keys unchanged
            settings["recipe"] = training["recipe"]
        return settings

    def variant_settings(self, method: str, healing: str, target: str, scale: float | None) -> dict[str, Any]:
        """Everything that reaches one variant's prune and replace jobs (and, through the scores file's key, its
        importance or select_layers job): the variant key hashes exactly this."""
        criterion = CRITERIA[method]
        return {
            "variant": f"{method}-{healing}/{target}",  # in the path too: keys of one model's variants never repeat
            "scores": self.scores_template(method),
            "prune": {
                "target": target_of(target),
                "sparsity_of": self.config["sparsity_of"],
                "settings": settings_of(criterion, self.config) if criterion.job == "prune" else {},
                "plugins": self.plugin_ids(method, healing),
            },
            "replace": {
                "training": self.training_settings(healing, scale),
                "lora": self.config["lora"] if "lora" in HEALING_KINDS[healing].settings else {},
                "plugins": self.plugin_ids(healing),
                "run": self.run_settings(),
            },
        }

    def grid_variants(self, grid: dict[str, Any]) -> list[tuple[str, str, str, float | None]]:
        """(method, healing, target, scale) of every variant one grid asks for, in config order."""
        return [
            (method, healing, target, scale)
            for method in grid["methods"]
            for healing in healings_for(method, grid)
            for target in target_tags(grid)
            for scale in training_scales(healing, grid)
        ]

    @functools.cached_property
    def variant_table(self) -> dict[str, dict[str, Any]]:
        """`{method}-{healing}/{target}/{key}` -> {method, healing, target, scale, key, settings}, in config order;
        an ablation's variant that an earlier grid already has is listed once."""
        table = {}
        for grid in self.grids():
            for method, healing, target, scale in self.grid_variants(grid):
                settings = self.variant_settings(method, healing, target, scale)
                key = settings_key(settings)
                table[f"{method}-{healing}/{target}/{key}"] = {
                    "method": method, "healing": healing, "target": target, "scale": scale, "key": key,
                    "settings": settings,
                }
        return table

    def compressed_variants(self) -> list[str]:
        """This experiment's compressed variants, `{method}-{healing}/{target}/{key}` (the folder under
        results/compressed/{model}/ and results/eval/{model}/), in config order; one per training scale for a
        kind that trains."""
        return list(self.variant_table)

    def all_variants(self) -> list[str]:
        return ["dense", *self.compressed_variants()]

    def variant(self, model: str, name: str) -> dict[str, Any]:
        """The variant-table entry of `{method}-{healing}/{target}/{key}`; one line for a name of another config."""
        entry = self.variant_table.get(name)
        if entry is None:
            raise ValueError(
                f"variant {model}/{name} is not one of this config's variants; its settings are in its "
                "settings.json (README, \"Experiments\")"
            )
        return entry

    # --- evaluation ----------------------------------------------------------------------------------------------
    def eval_settings(self, step: str) -> dict[str, Any]:
        """What reaches one evaluation step (EVAL_FILES). accuracy: evaluation minus stability_correctness (which
        only reaches stability, so changing it re-runs no model); stability: its rule and the accuracy key it
        compares."""
        config = self.config
        if step == "accuracy":
            evaluation = {k: v for k, v in config["evaluation"].items() if k != "stability_correctness"}
            return {"evaluation": evaluation, "run": self.run_settings()}
        if step == "perplexity":
            return {"perplexity": config["perplexity"], "run": self.run_settings()}
        if step == "model_stats":
            return {"speed": config["speed"], "run": self.run_settings()}
        if step == "stability":
            return {"correctness": config["evaluation"]["stability_correctness"], "accuracy": self.eval_key("accuracy")}
        raise ValueError(f"evaluation step {step!r} is unknown; allowed: {', '.join(EVAL_FILES)}")

    def eval_key(self, step: str) -> str:
        return settings_key(self.eval_settings(step))

    def eval_dir(self, model: str, variant: str, step: str) -> str:
        """results/eval/{model}/{variant}/{step}-{key}: one evaluation step of one variant."""
        return f"results/eval/{model}/{variant}/{step}-{self.eval_key(step)}"

    def eval_outputs(self, step: str, name: str) -> list[str]:
        """`name` of one evaluation step for every model and variant of this experiment."""
        return [f"{self.eval_dir(m, v, step)}/{name}" for m in self.config["models"] for v in self.all_variants()]

    def aggregate_entries(self) -> list[dict[str, Any]]:
        """One record per (model, variant) of this experiment for all.csv and paired.csv: its method, healing,
        target, key and training scale, and its files (the accuracy step's per-example `samples` folder too)."""
        entries = []
        for model in self.config["models"]:
            for variant in self.all_variants():
                info = self.variant_table.get(variant, {})
                entries.append(
                    {
                        "model": model,
                        "variant": variant,
                        "method": info.get("method", "dense"),
                        "healing": info.get("healing", "none"),
                        "target": info.get("target", ""),
                        "variant_key": info.get("key", ""),
                        "training_scale": info.get("scale"),
                        "compressed": f"results/compressed/{model}/{variant}/compressed.json" if info else None,
                        "samples": f"{self.eval_dir(model, variant, 'accuracy')}/samples",
                        **{step: f"{self.eval_dir(model, variant, step)}/{name}" for step, name in EVAL_FILES.items()},
                    }
                )
        return entries

    # --- every keyed folder ------------------------------------------------------------------------------------
    def keyed_folders(self) -> dict[str, tuple[Any, str, list[str]]]:
        """Every keyed folder this config's jobs write -> (the settings its settings.json must record, the output
        of the job that writes that record, the keyed folders made from its results): importance, search orders,
        variants, evaluation steps."""
        folders: dict[str, tuple[Any, str, list[str]]] = {}
        searches = [m for m in dict.fromkeys(m for g in self.grids() for m in g["methods"])
                    if CRITERIA[m].kind == "search"]
        for model in self.config["models"]:
            variants = {f"results/compressed/{model}/{name}": entry for name, entry in self.variant_table.items()}
            made_from: dict[str, list[str]] = {}  # a scores file's folder -> the variant folders planned from it
            for folder, entry in variants.items():
                if entry["settings"]["scores"] is not None:
                    scores = entry["settings"]["scores"].format(model=model)
                    made_from.setdefault(scores.rsplit("/", 1)[0], []).append(folder)
            folder = self.importance_dir(model)
            folders[folder] = (self.similarity_settings(), f"{folder}/pair_similarity.safetensors",
                               made_from.get(folder, []))
            for method in searches:
                order = self.order_path(model, method)
                folder = order.rsplit("/", 1)[0]
                dependants = [v for v in made_from.get(folder, []) if variants[v]["method"] == method]
                previous = folders.get(folder, (None, None, []))[2]
                folders[folder] = (self.select_settings(method), order, previous + dependants)
            for variant in self.all_variants():
                steps = {step: self.eval_dir(model, variant, step) for step in EVAL_FILES}
                for step, output in EVAL_FILES.items():
                    made = [steps["stability"]] if step == "accuracy" else []
                    folders[steps[step]] = (self.eval_settings(step), f"{steps[step]}/{output}", made)
                if variant != "dense":
                    folder = f"results/compressed/{model}/{variant}"
                    folders[folder] = (variants[folder]["settings"], f"{folder}/plan.json", list(steps.values()))
        return folders
