# Config validation, wildcard constraints, input functions and target lists shared by every rule.
import copy
import functools
import json
import math
from pathlib import Path

import jsonschema
from snakemake.logging import logger

from streamline.workflow import config_schema
from streamline.workflow.checks import config_seq_lens, seq_len_warnings
from streamline.pruning.criteria import CRITERIA, settings_of
from streamline.reporting import paper as paper_items
from streamline.reporting.plots import FIGURES
from streamline.data import CALIBRATION_MIRROR_FILES
from streamline.evaluation.harness import PROJECT_TASKS
from streamline.healing.kinds import FIT_TRAINING_KEYS, HEALING_KINDS, requested_kinds
from streamline.healing.recipes import DEFAULT_RECIPE
from streamline.importance.scores import METRICS
from streamline.acquisition.models import checkpoint_damage, checkpoint_parameters, local_checkpoint_files, rebuild_hint
from streamline.workflow.plugins import load_plugins
from streamline.provenance import config_hash as config_hash_of, settings_key


def _validate_config(config):
    """Validate against the schema, whose name enums are the registries' (and fill defaults); a bad value stops
    the run with one line naming it."""
    try:
        config_schema.validate(config)
    except jsonschema.ValidationError as err:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        raise SystemExit(f"config error at {where or 'top level'}: {err.message}")


def _load_plugins(config):
    """Import the config's `plugins` (before validation, so their criteria and healing kinds are valid names);
    returns registered name -> plugin."""
    entries = config.get("plugins") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return {}  # validation names the bad value
    try:
        return load_plugins(entries)
    except (ImportError, OSError, ValueError) as err:
        raise SystemExit(f"config error at plugins: {err}")


def _user_models_replace_defaults(config):
    """`models:` from --configfile/--config replace the default config.yaml's instead of being merged into them.

    Snakemake deep-merges every config file, so without this `--configfile user.yaml` would also run the
    default model (and merge a same-named entry's sources into one invalid entry).
    """
    given = workflow.config_settings.overwrite_config.get("models")
    if isinstance(given, dict) and config.get("models") != given:
        dropped = sorted(set(config.get("models") or {}) - set(given))
        config["models"] = copy.deepcopy(given)
        if dropped:
            left_out = ", ".join(dropped)
            logger.info(f"models: the command line's models replace the default config's ({left_out} left out)")


def _check_model_sources(config):
    """A model entry names exactly one source (the schema's oneOf would only say 'not valid under any')."""
    models = config.get("models")
    for name, entry in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(entry, dict):
            continue
        sources = [key for key in MODEL_SOURCES if key in entry]
        if len(sources) != 1:
            got = ", ".join(sources) if sources else f"only {', '.join(entry) or 'nothing'}"
            allowed = ", ".join(MODEL_SOURCES)
            raise SystemExit(f"config error at models.{name}: give exactly one of {allowed} (got {got})")


MODEL_SOURCES = ("hf", "local", "gguf")
_user_models_replace_defaults(config)
_check_model_sources(config)
PLUGIN_OF = _load_plugins(config)
_validate_config(config)

# The experiment's summaries (all.csv, tables, plots, report) live here; model-level work is keyed by its settings
# and shared between experiments (README, "Experiments").
EXPERIMENT = config["experiment"]
EXPERIMENT_DIR = f"results/experiments/{EXPERIMENT}"

# Wildcard patterns from the registries (criteria.CRITERIA, healing_kinds.HEALING_KINDS, importance.METRICS).
HEALING_RE = "|".join(HEALING_KINDS)
METHOD_RE = "|".join(CRITERIA)
METRIC_RE = "|".join(METRICS)
SEARCH_METHODS = [name for name, criterion in CRITERIA.items() if criterion.kind == "search"]
WINDOW_METHODS = [name for name, criterion in CRITERIA.items() if criterion.window]
# Folder names of the pruning targets: s{sparsity} or l{layers} (target_tags).
TARGET_RE = "s[0-9]*\\.?[0-9]+|l[0-9]+"
ASKED_HEALINGS = requested_kinds(config["healing"], config["replacements"])
MODELS = list(config["models"])
CONDA_ENV = "../envs/streamline.yaml"
# Threads of a model-running job; Snakemake caps it at --cores, so on a laptop these jobs run one at a time.
HEAVY_THREADS = 8



def sparsity_tag(value):
    """0.25 -> '0.25' (the s{sparsity} folder name)."""
    return f"{float(value):g}"


GRID_KEYS = ("methods", "sparsities", "prune_layers", "healing", "replacements", "scales")


def grids():
    """The experiment's variant grids: the top-level one, then each `ablations` entry with the top level's value
    for every key it leaves out (naming sparsities or prune_layers leaves the other empty)."""
    top = {key: config[key] for key in GRID_KEYS if key != "scales"} | {"scales": config["training"]["scales"]}
    out = [top]
    for entry in config["ablations"]:
        targets = {"sparsities": [], "prune_layers": []} if {"sparsities", "prune_layers"} & set(entry) else {}
        out.append(top | targets | entry)
    return out


def target_tags(grid=None):
    """The pruning targets' folder names of a grid (default: the top-level one): s{sparsity} for each of
    `sparsities`, l{n} for each of `prune_layers`."""
    grid = grid or grids()[0]
    return [f"s{sparsity_tag(s)}" for s in grid["sparsities"]] + [f"l{int(n)}" for n in grid["prune_layers"]]


def target_of(tag):
    """A target folder name -> the plan's target: 's0.25' -> {"sparsity": 0.25}, 'l8' -> {"layers": 8}."""
    if tag.startswith("l"):
        return {"sparsity": None, "layers": int(tag[1:])}
    return {"sparsity": float(tag[1:]), "layers": None}


def search_targets():
    """The largest sparsity and layer count a search method's order must reach (None where none is asked)."""
    return {
        "max_sparsity": max((s for grid in grids() for s in grid["sparsities"]), default=None),
        "max_layers": max((n for grid in grids() for n in grid["prune_layers"]), default=None),
        "sparsity_of": config["sparsity_of"],
    }


if not config["sparsities"] and not config["prune_layers"]:
    raise SystemExit("config error at sparsities: empty, and prune_layers is empty too; name at least one target")


def healings_for(method, grid=None):
    """The healing kinds of a grid (default: the top-level one) that apply to `method`, in config order: a kind
    that needs a window only for a criterion that removes one."""
    asked = ASKED_HEALINGS if grid is None else requested_kinds(grid["healing"], grid["replacements"])
    window = CRITERIA[method].window
    return [kind for kind in asked if window or not HEALING_KINDS[kind].window]


def compressed_variants():
    """This experiment's compressed variants, `{method}-{healing}/{target}/{key}` (the folder under
    results/compressed/{model}/ and results/eval/{model}/), in config order; one per training scale for a kind
    that trains."""
    return list(variant_table())


def all_variants():
    return ["dense", *compressed_variants()]


def model_source(wildcards):
    """The source keys of a model's entry (size_b only sizes cluster jobs and must not re-trigger acquisition)."""
    entry = config["models"][wildcards.model]
    return {key: entry[key] for key in ("hf", "revision", "local", "gguf") if key in entry}


def model_source_files(wildcards):
    """The files a `local:` (or .gguf path) source is read from, so replacing them re-runs acquisition.

    A source that does not exist gives no inputs: the job then fails with the loader's one-line message.
    """
    entry = config["models"][wildcards.model]
    if "local" in entry:
        return [str(p) for p in local_checkpoint_files(Path(entry["local"]).expanduser())]
    if "gguf" in entry and str(entry["gguf"]).endswith(".gguf") and Path(entry["gguf"]).expanduser().is_file():
        return [str(Path(entry["gguf"]).expanduser())]
    return []


def _model_config_json(model):
    """The model's config.json as far as it is known before any job runs: acquired, else the local source."""
    acquired = Path(f"results/models/{model}/config.json")
    entry = config["models"][model]
    local = Path(entry["local"]).expanduser() / "config.json" if "local" in entry else None
    for path in (acquired, local):
        if path is not None and path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None
    return None


def task_files(wildcards):
    """The task definitions accuracy reads (the project's mirror tasks and every extra_task_dirs folder), so
    editing one re-runs accuracy. A missing folder gives no inputs: the job names it in one line."""
    folders = [PROJECT_TASKS, *config["evaluation"]["extra_task_dirs"]]
    files = []
    for folder in map(Path, folders):
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml", ".py") and p.is_file())
    return [str(p) for p in files]


# The experiment's tables (all.csv and its provenance from the aggregate job, paired.csv from the paired job, the
# rest from the tables job), copied
# to results/tables/ (the current_tables job), the folder of the users' command
# `snakemake --cores 8 results/tables/all.csv`.
TABLE_FILES = ["all.csv", "provenance.json", "paired.csv", "main.md", "main.tex", "stability.md"]
CURRENT_TABLES_DIR = "results/tables"


def report_targets():
    """Everything the default target builds: the experiment's tables (and their copy in results/tables/) and
    every plot."""
    return [
        *expand(f"{EXPERIMENT_DIR}/tables/{{name}}", name=TABLE_FILES),
        *expand(f"{CURRENT_TABLES_DIR}/{{name}}", name=TABLE_FILES),
        *expand(f"{EXPERIMENT_DIR}/plots/{{plot}}.{{ext}}", plot=PLOT_NAMES, ext=["png", "pdf"]),
        *expand(f"{EXPERIMENT_DIR}/plots/importance_{{model}}.{{ext}}", model=MODELS, ext=["png", "pdf"]),
    ]


def results_config_hash():
    """Hash of the config minus what cannot change a result (plot style, cluster resources, the experiment name)."""
    return config_hash_of({k: v for k, v in config.items() if k not in ("plots", "resources", "experiment")})


def run_settings():
    """Settings every heavy step shares (dtype, device, data mirror)."""
    return {"dtype": config["dtype"], "device": config["device"], "data_mirror": config["data_mirror"]}


# Keyed work (README, "Experiments"). Each job's outputs live in a folder keyed by the settings it gets, so
# experiments share work whose settings are equal and never overwrite work whose settings differ. The key is
# provenance.settings_key of the SAME dict the rule passes as params (functions below); a job whose path key
# differs from its settings' key stops with one line.
KEY_RE = "[0-9a-f]{8}"
# The evaluation steps (each its own rule and keyed folder) and the file of each that all.csv reads.
EVAL_FILES = {"accuracy": "accuracy.json", "perplexity": "ppl.json", "model_stats": "model_stats.json",
              "stability": "stability.json"}


def plugin_names(*names):
    """The plugins that registered these method / healing-kind names (each job imports them again)."""
    return sorted({PLUGIN_OF[name] for name in names if name in PLUGIN_OF})


def similarity_settings():
    """What reaches the similarity job (and so every importance table of a model)."""
    return {"calibration": config["calibration"], "run": run_settings()}


def importance_dir(model):
    """results/importance/{model}/{key}: pair similarities, the per-metric tables and heatmaps."""
    return f"results/importance/{model}/{settings_key(similarity_settings())}"


def select_settings(method):
    """What reaches a search method's select_layers job (the criterion's own config keys, e.g. `laco:`)."""
    criterion = CRITERIA[method]
    return {
        "search": config["search"],
        "calibration_dataset": config["calibration"]["dataset"],
        "settings": settings_of(criterion, config) if criterion.job == "select_layers" else {},
        "plugins": plugin_names(method),
        "targets": search_targets(),
        "run": run_settings(),
    }


def order_path(model, method):
    """results/importance/{model}/{key}/{method}_order.json: a search method's layer order."""
    return f"results/importance/{model}/{settings_key(select_settings(method))}/{method}_order.json"


def scores_template(method):
    """The file a method's plan is made from, with `{model}` left open: its layer order (search criteria), the
    importance table its registry entry names, or None (last-n, random)."""
    criterion = CRITERIA[method]
    if criterion.kind == "search":
        return order_path("{model}", method)
    if criterion.metric is None:
        return None
    return f"{importance_dir('{model}')}/{criterion.metric}.csv"


def training_scales(healing, grid):
    """The budgets a kind is trained at (the grid's scales); [None] for a kind that does not train."""
    return list(grid["scales"]) if HEALING_KINDS[healing].trains else [None]


def training_settings(healing, scale):
    """The `training` keys that reach a kind's replace job, with samples = scale x training.samples: none for a
    kind that does not train (so `none` is not re-run when they change), `init_layer` only where the kind's start
    layer follows it, a fit only its data keys (healing_kinds.HealingKind.settings), `recipe` only a kind with an
    official recipe and only when not the default. `scales` never reaches a job:
    a budget is its samples, so 2 x 64 and 1 x 128 share one variant."""
    uses = HEALING_KINDS[healing].settings
    if "training" in uses:
        keys = [k for k in config["training"] if k != "init_layer" or "init_layer" in uses]
    elif "training_data" in uses:
        keys = [k for k in config["training"] if k in FIT_TRAINING_KEYS]
    else:
        return {}
    settings = {k: config["training"][k] for k in keys if k not in ("scales", "recipe")}
    settings["samples"] = round(scale * config["training"]["samples"])
    if HEALING_KINDS[healing].official and config["training"]["recipe"] != DEFAULT_RECIPE:  # else keys unchanged
        settings["recipe"] = config["training"]["recipe"]
    return settings


def variant_settings(method, healing, target, scale):
    """Everything that reaches one variant's prune and replace jobs (and, through the scores file's key, its
    importance or select_layers job): the variant key hashes exactly this."""
    criterion = CRITERIA[method]
    return {
        "variant": f"{method}-{healing}/{target}",  # in the path too: keys of one model's variants never repeat
        "scores": scores_template(method),
        "prune": {
            "target": target_of(target),
            "sparsity_of": config["sparsity_of"],
            "settings": settings_of(criterion, config) if criterion.job == "prune" else {},
            "plugins": plugin_names(method, healing),
        },
        "replace": {
            "training": training_settings(healing, scale),
            "lora": config["lora"] if "lora" in HEALING_KINDS[healing].settings else {},
            "plugins": plugin_names(healing),
            "run": run_settings(),
        },
    }


@functools.cache
def variant_table():
    """`{method}-{healing}/{target}/{key}` -> {method, healing, target, scale, key, settings} for this config."""
    table = {}
    combinations = [
        (method, healing, target, scale)
        for grid in grids()  # an ablation's variant that the top-level grid already has is listed once
        for method in grid["methods"]
        for healing in healings_for(method, grid)
        for target in target_tags(grid)
        for scale in training_scales(healing, grid)
    ]
    for method, healing, target, scale in combinations:
        settings = variant_settings(method, healing, target, scale)
        key = settings_key(settings)
        table[f"{method}-{healing}/{target}/{key}"] = {
            "method": method, "healing": healing, "target": target, "scale": scale, "key": key,
            "settings": settings,
        }
    return table


def keyed(key, settings, what):
    """`settings` when they hash to the path's `key`; else one line (a path from another config's settings)."""
    if settings_key(settings) != key:
        raise ValueError(
            f"{what}: the folder key {key} is not the key of this config's settings ({settings_key(settings)}); "
            "its settings are in the folder's settings.json (README, \"Experiments\")"
        )
    return settings


def variant_of(wildcards):
    """The variant-table entry of a prune/replace job's `{method}-{healing}/{target}/{key}`."""
    name = f"{wildcards.method}-{wildcards.healing}/{wildcards.target}/{wildcards.key}"
    entry = variant_table().get(name)
    if entry is None:
        raise ValueError(
            f"variant {wildcards.model}/{name} is not one of this config's variants; its settings are in its "
            "settings.json (README, \"Experiments\")"
        )
    return entry


def variant_param(job, name):
    """Params function: one setting of a prune ("prune") or replace ("replace") job, from the variant table."""
    return lambda wildcards: variant_of(wildcards)["settings"][job][name]


def variant_scores(wildcards):
    """Input function: the variant's scores file (its plan is made from it), or none."""
    template = variant_of(wildcards)["settings"]["scores"]
    return [] if template is None else template.format(model=wildcards.model)


def eval_settings(step):
    """What reaches one evaluation step (EVAL_FILES). accuracy: evaluation minus stability_correctness (which only
    reaches stability, so changing it re-runs no model); stability: its rule and the accuracy key it compares."""
    if step == "accuracy":
        evaluation = {k: v for k, v in config["evaluation"].items() if k != "stability_correctness"}
        return {"evaluation": evaluation, "run": run_settings()}
    if step == "perplexity":
        return {"perplexity": config["perplexity"], "run": run_settings()}
    if step == "model_stats":
        return {"speed": config["speed"], "run": run_settings()}
    return {"correctness": config["evaluation"]["stability_correctness"], "accuracy": eval_key("accuracy")}


def eval_key(step):
    return settings_key(eval_settings(step))


def eval_dir(model, variant, step):
    """results/eval/{model}/{variant}/{step}-{key}: one evaluation step of one variant."""
    return f"results/eval/{model}/{variant}/{step}-{eval_key(step)}"


def eval_params(step):
    """Params function of an evaluation rule: its settings, checked against the path's key."""
    return lambda wildcards: keyed(wildcards.key, eval_settings(step), f"{step}[{wildcards.model}/{wildcards.variant}]")


def eval_outputs(step, name):
    """`name` of one evaluation step for every model and variant of this experiment."""
    return [f"{eval_dir(model, variant, step)}/{name}" for model in MODELS for variant in all_variants()]


def checkpoint_marker(wildcards):
    """The file whose existence means the variant's checkpoint folder is complete."""
    if wildcards.variant == "dense":
        return f"results/models/{wildcards.model}/manifest.json"
    return f"results/compressed/{wildcards.model}/{wildcards.variant}/compressed.json"


def plans_of_model(wildcards):
    return [f"results/compressed/{wildcards.model}/{v}/plan.json" for v in compressed_variants()]


def aggregate_entries():
    """One record per (model, variant) of this experiment for all.csv and paired.csv: its method, healing, target,
    key and training scale, and its files (the accuracy step's per-example `samples` folder too)."""
    entries = []
    for model in MODELS:
        for variant in all_variants():
            info = variant_table().get(variant, {})
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
                    "samples": f"{eval_dir(model, variant, 'accuracy')}/samples",
                    **{step: f"{eval_dir(model, variant, step)}/{name}" for step, name in EVAL_FILES.items()},
                }
            )
    return entries


# Cluster resources of model-running rules, derived from the model's size (README: "Run on a cluster").
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


@functools.cache
def _checkpoint_size_b(model):
    """Billions of parameters of an acquired model (its manifest) or a `local:` checkpoint; None when unknown."""
    manifest = Path(f"results/models/{model}/manifest.json")
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text())["parameters"] / 1e9
        except (OSError, ValueError, KeyError):
            pass
    entry = config["models"][model]
    if "local" in entry:
        params = checkpoint_parameters(Path(entry["local"]).expanduser())
        return params / 1e9 if params else None
    return None


def model_size_b(wildcards):
    """Billions of parameters: models.NAME.size_b, else counted from the acquired or local checkpoint, else 1."""
    entry = config["models"][wildcards.model]
    if "size_b" in entry:
        return float(entry["size_b"])
    return _checkpoint_size_b(wildcards.model) or 1.0


def heavy_gpus(wildcards):
    """GPUs for one model in bf16 plus 30% for activations and caches; 0 when the rule runs on CPU."""
    mode = config["resources"]["gpu"]
    if mode is False or (mode == "auto" and model_size_b(wildcards) < 1.0):
        return 0
    need_gb = model_size_b(wildcards) * 2 * 1.3
    return max(1, math.ceil(need_gb / config["resources"]["gpu_mem_gb"]))


def heavy_mem_mb(wildcards):
    """Host RAM: one copy of the checkpoint in its saved dtype plus 30%, plus 4 GB for the runtime."""
    gb = model_size_b(wildcards) * BYTES_PER_PARAM[config["checkpoint_dtype"]] * 1.3 + 4
    return int(math.ceil(gb * 1024))


def heavy_runtime(wildcards):
    return int(30 + config["resources"]["runtime_min_per_b"] * model_size_b(wildcards))


# Cross-key checks (after the schema): contradictions stop the run with one line, questionable values warn.
def check_sparsities(values, where="sparsities"):
    """Each sparsity must have its own folder name that reads back as the same number (s{tag})."""
    seen = {}
    for i, value in enumerate(values):
        tag = sparsity_tag(value)
        if tag in seen:
            raise SystemExit(
                f"config error at {where}[{i}]: {value!r} and {seen[tag]!r} both give the folder s{tag}; "
                "sparsities must differ within 6 significant digits"
            )
        if "e" in tag or float(tag) != float(value):
            raise SystemExit(
                f"config error at {where}[{i}]: {value!r} has no exact folder name (s{tag}); "
                "use a decimal of at most 6 significant digits, at least 0.0001"
            )
        seen[tag] = value


def check_ablations(ablations):
    """An ablation's sparsities and scales obey the same rules as the top level's."""
    for i, entry in enumerate(ablations):
        check_sparsities(entry.get("sparsities", []), f"ablations[{i}].sparsities")
        check_training_scales(config["training"], entry.get("scales", []), f"ablations[{i}].scales")


def check_training_scales(training, scales=None, where="training.scales"):
    """Each training scale must give a whole number of training sequences (scale x training.samples)."""
    for i, scale in enumerate(training["scales"] if scales is None else scales):
        samples = scale * training["samples"]
        if samples < 1 or abs(samples - round(samples)) > 1e-9:
            raise SystemExit(
                f"config error at {where}[{i}]: {scale!r} x training.samples {training['samples']} = "
                f"{samples:g} sequences; a scale must give a whole number of at least 1"
            )


def check_limits(evaluation):
    """Every evaluation.limits key must name a configured task (a typo would silently evaluate the full set)."""
    for task in evaluation["limits"]:
        if task not in evaluation["tasks"]:
            raise SystemExit(
                f"config error at evaluation.limits.{task}: {task!r} names no task in evaluation.tasks "
                f"({', '.join(evaluation['tasks'])})"
            )


def check_datasets():
    """calibration.dataset and training.dataset: a known corpus or an existing text file."""
    allowed = ", ".join(sorted(CALIBRATION_MIRROR_FILES))
    for key in ("calibration", "training"):
        value = config[key]["dataset"]
        if value not in CALIBRATION_MIRROR_FILES and not Path(value).expanduser().is_file():
            raise SystemExit(
                f"config error at {key}.dataset: {value!r} is neither one of {allowed} nor an existing text file"
            )


def dropped_combinations():
    """Lines naming the configured healing kinds that `healings_for` leaves out for some methods, grouped by them."""
    groups = {}
    for kind in ASKED_HEALINGS:
        methods = tuple(m for m in config["methods"] if kind not in healings_for(m))
        if methods:
            groups.setdefault(methods, []).append(kind)
    windows = ", ".join(WINDOW_METHODS)
    return [
        f"healing {', '.join(kinds)} dropped for {', '.join(methods)}: "
        f"{'it applies' if len(kinds) == 1 else 'they apply'} only to window methods ({windows})"
        for methods, kinds in groups.items()
    ]


def check_combinations():
    """Warn for each dropped method/healing combination; stop when no compressed variant is left."""
    lines = dropped_combinations()
    if not compressed_variants():
        raise SystemExit(f"config error at healing: no compressed variant is left ({'; '.join(lines)})")
    for line in lines:
        logger.warning(f"warning: {line}")


def check_seq_lens():
    """Warn for each seq_len beyond a model's max_position_embeddings, where its config is known before any job
    runs (acquired, or a local source); otherwise acquire_model warns once it has converted the model."""
    for model in MODELS:
        model_config = _model_config_json(model) or {}
        for line in seq_len_warnings(model, model_config.get("max_position_embeddings"), config_seq_lens(config)):
            logger.warning(f"warning: {line}")


def check_checkpoints():
    """Warn for every finished checkpoint folder whose weights were deleted or cut short since it was written
    (Snakemake tracks only its marker file); the job that reads it stops with the same rebuild command."""
    folders = [f"results/models/{m}" for m in MODELS]
    folders += [f"results/compressed/{m}/{v}" for m in MODELS for v in compressed_variants()]
    for folder in map(Path, folders):
        hint = rebuild_hint(folder)  # empty unless the folder's rule output (its marker) exists
        damage = checkpoint_damage(folder) if hint else None
        if damage:
            logger.warning(f"warning: checkpoint {str(folder)!r} is damaged: {damage}{hint}")


check_sparsities(config["sparsities"])
check_training_scales(config["training"])
check_ablations(config["ablations"])
check_limits(config["evaluation"])
check_datasets()
check_combinations()
check_seq_lens()
check_checkpoints()


# The experiment's plots and the paper items (rules/paper.smk; README "Regenerating the paper"), from their
# registries: streamline/reporting/plots.py FIGURES and streamline/reporting/paper.py ITEMS.
PLOT_NAMES = list(FIGURES)
PAPER_DIR = f"{EXPERIMENT_DIR}/paper"
PAPER_TABLES = paper_items.names("table")
PAPER_FIGURES = paper_items.names("figure")
PAPER_MODEL_FIGURES = paper_items.names("model_figure")


def paper_targets():
    """Every paper item's files: tables as Markdown + LaTeX, figures as PNG + PDF (per-model figures per model)."""
    return [
        *expand(f"{PAPER_DIR}/{{item}}.{{ext}}", item=PAPER_TABLES, ext=["md", "tex"]),
        *expand(f"{PAPER_DIR}/{{item}}.{{ext}}", item=PAPER_FIGURES, ext=["png", "pdf"]),
        *expand(f"{PAPER_DIR}/{{item}}_{{model}}.{{ext}}", item=PAPER_MODEL_FIGURES, model=MODELS, ext=["png", "pdf"]),
    ]


def check_figure_settings(figures):
    """plots.figures names paper figures only (PAPER_FIGURES and the per-model ones)."""
    known = [*PAPER_FIGURES, *PAPER_MODEL_FIGURES]
    for name in figures:
        if name not in known:
            raise SystemExit(f"config error at plots.figures.{name}: {name!r} is not a paper figure; allowed: {', '.join(known)}")


check_figure_settings(config["plots"]["figures"])


def figure_dpi(item):
    """A paper figure's resolution: plots.figures.{item}.dpi, else plots.dpi (so restyling one figure re-runs
    only that figure's rule)."""
    return config["plots"]["figures"].get(item, {}).get("dpi", config["plots"]["dpi"])
