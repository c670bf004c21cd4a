# Config validation, wildcard constraints, input functions and target lists shared by every rule.
import copy
import functools
import json
import math
from pathlib import Path

import jsonschema
from snakemake.logging import logger

from streamline import config_schema
from streamline.checks import config_seq_lens, seq_len_warnings
from streamline.criteria import CRITERIA, settings_of
from streamline.data import CALIBRATION_MIRROR_FILES
from streamline.evaluate import PROJECT_TASKS
from streamline.healing_kinds import HEALING_KINDS, requested_kinds
from streamline.importance import METRICS
from streamline.models import checkpoint_damage, checkpoint_parameters, local_checkpoint_files, rebuild_hint
from streamline.plugins import load_plugins
from streamline.provenance import config_hash as config_hash_of


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


def target_tags():
    """The pruning targets' folder names: s{sparsity} for each of `sparsities`, l{n} for each of `prune_layers`."""
    return [f"s{sparsity_tag(s)}" for s in config["sparsities"]] + [f"l{int(n)}" for n in config["prune_layers"]]


def target_of(tag):
    """A target folder name -> the plan's target: 's0.25' -> {"sparsity": 0.25}, 'l8' -> {"layers": 8}."""
    if tag.startswith("l"):
        return {"sparsity": None, "layers": int(tag[1:])}
    return {"sparsity": float(tag[1:]), "layers": None}


def search_targets():
    """The largest sparsity and layer count a search method's order must reach (None where none is asked)."""
    return {
        "max_sparsity": max(config["sparsities"], default=None),
        "max_layers": max(config["prune_layers"], default=None),
        "sparsity_of": config["sparsity_of"],
    }


if not config["sparsities"] and not config["prune_layers"]:
    raise SystemExit("config error at sparsities: empty, and prune_layers is empty too; name at least one target")


def healings_for(method):
    """The healing kinds that apply to `method`, in config order: a kind that needs a window only for a criterion
    that removes one."""
    window = CRITERIA[method].window
    return [kind for kind in ASKED_HEALINGS if window or not HEALING_KINDS[kind].window]


def compressed_variants():
    return [
        f"{method}-{healing}/{target}"
        for method in config["methods"]
        for healing in healings_for(method)
        for target in target_tags()
    ]


def all_variants():
    return ["dense", *compressed_variants()]


def healing_training(wildcards):
    """Training settings reach only the kinds that train, so `none` is not re-run when they change;
    `init_layer` reaches only the kinds whose start layer follows it (healing_kinds.HealingKind.settings)."""
    uses = HEALING_KINDS[wildcards.healing].settings
    if "training" not in uses:
        return {}
    return {key: value for key, value in config["training"].items() if key != "init_layer" or "init_layer" in uses}


def healing_lora(wildcards):
    return config["lora"] if "lora" in HEALING_KINDS[wildcards.healing].settings else {}


def criterion_settings(job):
    """Input function: the config keys the criterion registered, for the one job that runs it (prune for window
    and order criteria, select_layers for search criteria); `{}` for the other job. So changing `search.seed`
    re-plans only `random`, and `laco:` reaches only laco's select_layers."""

    def settings(wildcards):
        criterion = CRITERIA[wildcards.method]
        return settings_of(criterion, config) if criterion.job == job else {}

    return settings


def plugins_of(*wildcard_names):
    """Input function: the plugins that registered the job's method or healing kind (imported again by the job)."""

    def plugins(wildcards):
        names = [getattr(wildcards, name) for name in wildcard_names]
        return sorted({PLUGIN_OF[name] for name in names if name in PLUGIN_OF})

    return plugins


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


def checkpoint_marker(wildcards):
    """The file whose existence means the variant's checkpoint folder is complete."""
    if wildcards.variant == "dense":
        return f"results/models/{wildcards.model}/manifest.json"
    return f"results/compressed/{wildcards.model}/{wildcards.variant}/compressed.json"


def prune_scores(wildcards):
    """What a method's plan is made from: its layer order (search criteria), the importance table its registry
    entry names, or nothing (last-n, random)."""
    criterion = CRITERIA[wildcards.method]
    if criterion.kind == "search":
        return f"results/importance/{wildcards.model}/{wildcards.method}_order.json"
    if criterion.metric is None:
        return []
    return f"results/importance/{wildcards.model}/{criterion.metric}.csv"


def plans_of_model(wildcards):
    return [f"results/compressed/{wildcards.model}/{v}/plan.json" for v in compressed_variants()]


def report_targets():
    """Everything the default target builds: the tidy table, the paper tables and every plot."""
    plots = ["accuracy", "relative_accuracy", "stability", "perplexity"]
    return [
        "results/tables/all.csv",
        "results/tables/main.md",
        "results/tables/main.tex",
        "results/tables/stability.md",
        *expand("results/plots/{kind}_vs_sparsity.{ext}", kind=plots, ext=["png", "pdf"]),
        *expand("results/plots/healing_cost.{ext}", ext=["png", "pdf"]),
        *expand("results/plots/importance_{model}.{ext}", model=MODELS, ext=["png", "pdf"]),
    ]


def results_config_hash():
    """Hash of the config minus what cannot change a result (plot style, cluster resources)."""
    return config_hash_of({k: v for k, v in config.items() if k not in ("plots", "resources")})


def eval_outputs(name):
    return expand(f"results/eval/{{model}}/{{variant}}/{name}", model=MODELS, variant=all_variants())


def run_settings():
    """Settings every heavy step shares (dtype, device, data mirror)."""
    return {"dtype": config["dtype"], "device": config["device"], "data_mirror": config["data_mirror"]}


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
def check_sparsities(values):
    """Each sparsity must have its own folder name that reads back as the same number (s{tag})."""
    seen = {}
    for i, value in enumerate(values):
        tag = sparsity_tag(value)
        if tag in seen:
            raise SystemExit(
                f"config error at sparsities[{i}]: {value!r} and {seen[tag]!r} both give the folder s{tag}; "
                "sparsities must differ within 6 significant digits"
            )
        if "e" in tag or float(tag) != float(value):
            raise SystemExit(
                f"config error at sparsities[{i}]: {value!r} has no exact folder name (s{tag}); "
                "use a decimal of at most 6 significant digits, at least 0.0001"
            )
        seen[tag] = value


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
check_limits(config["evaluation"])
check_datasets()
check_combinations()
check_seq_lens()
check_checkpoints()
