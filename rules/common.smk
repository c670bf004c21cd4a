# Config validation, wildcard constraints, input functions and target lists shared by every rule. The logic lives
# in the package (streamline/workflow/: variants.py = variants and settings keys, checks.py = config checks,
# inputs.py = the files each job reads, resources.py = cluster resources); these functions bind it to this config.
import copy
import functools
import json
from pathlib import Path

import jsonschema
from snakemake.logging import logger

from streamline.workflow import checks, config_schema, inputs, resources, variants
from streamline.workflow.checks import ConfigError, config_seq_lens, seq_len_warnings
from streamline.workflow.variants import EVAL_FILES, KEY_RE, TARGET_RE, keyed, sparsity_tag, target_of
from streamline.pruning.criteria import CRITERIA
from streamline.reporting import paper as paper_items
from streamline.reporting.plots import FIGURES
from streamline.data import CALIBRATION_MIRROR_FILES
from streamline.healing.kinds import HEALING_KINDS
from streamline.importance.windows import METRICS
from streamline.acquisition.checkpoint_files import checkpoint_damage, rebuild_hint
from streamline.workflow.plugins import load_plugins, plugin_identity
from streamline.provenance import config_hash as config_hash_of


def _validate_config(config):
    """Validate against the schema, whose name enums are the registries' (and fill defaults); a bad value stops
    the run with one line naming it."""
    try:
        config_schema.validate(config)
    except jsonschema.ValidationError as err:
        raise SystemExit(config_schema.error_line(err))


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


def _checked(check, *args):
    """Run a streamline.workflow.checks function; its ConfigError stops the run with its one line."""
    try:
        return check(*args)
    except ConfigError as err:
        raise SystemExit(str(err))


_user_models_replace_defaults(config)
_checked(checks.check_model_sources, config.get("models"))
PLUGIN_OF = _load_plugins(config)
_validate_config(config)

# The experiment's summaries (all.csv, tables, plots, report) live here; model-level work is keyed by its settings
# and shared between experiments (README, "Experiments").
EXPERIMENT = config["experiment"]
EXPERIMENT_DIR = f"results/experiments/{EXPERIMENT}"
# Variants and settings keys of this config (streamline/workflow/variants.py); a plugin's code is in its keys.
VARIANTS = variants.Experiment(config, {name: plugin_identity(entry) for name, entry in PLUGIN_OF.items()})

# Wildcard patterns from the registries (criteria.CRITERIA, healing_kinds.HEALING_KINDS, importance.METRICS).
HEALING_RE = "|".join(HEALING_KINDS)
METHOD_RE = "|".join(CRITERIA)
METRIC_RE = "|".join(METRICS)
SEARCH_METHODS = [name for name, criterion in CRITERIA.items() if criterion.kind == "search"]
MODELS = list(config["models"])
CONDA_ENV = "../envs/streamline.yaml"
# Threads of a model-running job; Snakemake caps it at --cores, so on a laptop these jobs run one at a time.
HEAVY_THREADS = 8


def grids():
    """The experiment's variant grids: the top-level one, then each `ablations` entry (variants.Experiment.grids)."""
    return VARIANTS.grids()


def target_tags(grid=None):
    """The pruning targets' folder names of a grid (default: the top-level one): s{sparsity}, l{n}."""
    return variants.target_tags(grid or grids()[0])


def healings_for(method, grid=None):
    """The healing kinds of a grid (default: the top-level one) that apply to `method`, in config order."""
    return variants.healings_for(method, grid or grids()[0])


def compressed_variants():
    """This experiment's compressed variants, `{method}-{healing}/{target}/{key}`, in config order."""
    return VARIANTS.compressed_variants()


def all_variants():
    return VARIANTS.all_variants()


def model_source(wildcards):
    """The source keys of a model's entry (size_b only sizes cluster jobs and must not re-trigger acquisition)."""
    return inputs.model_source(config["models"][wildcards.model])


def model_source_files(wildcards):
    """The files a `local:` (or .gguf path) source is read from, so replacing them re-runs acquisition.

    A source that does not exist gives no inputs: the job then fails with the loader's one-line message.
    """
    return inputs.model_source_files(config["models"][wildcards.model])


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


# The files each job reads besides its rule inputs (streamline/workflow/inputs.py), found once per DAG.
_TASK_FILES = functools.cache(lambda: inputs.task_files(config))
_CALIBRATION_FILES = functools.cache(lambda: inputs.calibration_files(config))
_PERPLEXITY_FILES = functools.cache(lambda: inputs.perplexity_files(config))
_TRAINING_FILES = functools.cache(lambda healing: inputs.training_files(config, healing))


def task_files(wildcards):
    """The files accuracy reads (task definitions of tasks/mirror and every extra_task_dirs folder, and the mirror
    data of the configured mirror tasks), so editing one re-runs accuracy."""
    return _TASK_FILES()


def calibration_files(wildcards):
    """The calibration text the similarity and select_layers jobs read (a mirror file or the dataset's text file)."""
    return _CALIBRATION_FILES()


def training_files(wildcards):
    """The training text a replace job reads (for a kind that trains)."""
    return _TRAINING_FILES(wildcards.healing)


def perplexity_files(wildcards):
    return _PERPLEXITY_FILES()


# The experiment's tables (all.csv and its provenance from the aggregate job, paired.csv from the paired job, the
# rest from the tables job), copied to results/tables/ (the current_tables job), the folder of the users' command
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
    return VARIANTS.run_settings()


# Keyed work (README, "Experiments"). Each job's outputs live in a folder keyed by the settings it gets, so
# experiments share work whose settings are equal and never overwrite work whose settings differ. The key is
# provenance.settings_key of the SAME dict the rule passes as params (streamline/workflow/variants.py); a job whose
# path key differs from its settings' key stops with one line.
def similarity_settings():
    """What reaches the similarity job (and so every importance table of a model)."""
    return VARIANTS.similarity_settings()


def importance_dir(model):
    """results/importance/{model}/{key}: pair similarities, the per-metric tables and heatmaps."""
    return VARIANTS.importance_dir(model)


def select_settings(method):
    """What reaches a search method's select_layers job (the criterion's own config keys, e.g. `laco:`)."""
    return VARIANTS.select_settings(method)


def variant_table():
    """`{method}-{healing}/{target}/{key}` -> {method, healing, target, scale, key, settings} for this config."""
    return VARIANTS.variant_table


def variant_of(wildcards):
    """The variant-table entry of a prune/replace job's `{method}-{healing}/{target}/{key}`."""
    name = f"{wildcards.method}-{wildcards.healing}/{wildcards.target}/{wildcards.key}"
    return VARIANTS.variant(wildcards.model, name)


def variant_param(job, name):
    """Params function: one setting of a prune ("prune") or replace ("replace") job, from the variant table."""
    return lambda wildcards: variant_of(wildcards)["settings"][job][name]


def variant_scores(wildcards):
    """Input function: the variant's scores file (its plan is made from it), or none."""
    template = variant_of(wildcards)["settings"]["scores"]
    return [] if template is None else template.format(model=wildcards.model)


def eval_settings(step):
    """What reaches one evaluation step (EVAL_FILES): variants.Experiment.eval_settings."""
    return VARIANTS.eval_settings(step)


def eval_key(step):
    return VARIANTS.eval_key(step)


def eval_dir(model, variant, step):
    """results/eval/{model}/{variant}/{step}-{key}: one evaluation step of one variant."""
    return VARIANTS.eval_dir(model, variant, step)


def eval_params(step):
    """Params function of an evaluation rule: its settings, checked against the path's key."""
    return lambda wildcards: keyed(wildcards.key, eval_settings(step), f"{step}[{wildcards.model}/{wildcards.variant}]")


def eval_outputs(step, name):
    """`name` of one evaluation step for every model and variant of this experiment."""
    return VARIANTS.eval_outputs(step, name)


def checkpoint_marker(wildcards):
    """The file whose existence means the variant's checkpoint folder is complete."""
    if wildcards.variant == "dense":
        return f"results/models/{wildcards.model}/manifest.json"
    return f"results/compressed/{wildcards.model}/{wildcards.variant}/compressed.json"


def plans_of_model(wildcards):
    return [f"results/compressed/{wildcards.model}/{v}/plan.json" for v in compressed_variants()]


def aggregate_entries():
    """One record per (model, variant) of this experiment for all.csv: its files, key and training scale."""
    return VARIANTS.aggregate_entries()


# Cluster resources of model-running rules, derived from the model's size (streamline/workflow/resources.py).
@functools.cache
def _checkpoint_size_b(model):
    return resources.checkpoint_size_b(f"results/models/{model}/manifest.json", config["models"][model])


def model_size_b(wildcards):
    """Billions of parameters: models.NAME.size_b, else counted from the acquired or local checkpoint, else 1."""
    entry = config["models"][wildcards.model]
    return resources.model_size_b(entry, None if "size_b" in entry else _checkpoint_size_b(wildcards.model))


def heavy_gpus(wildcards):
    return resources.heavy_gpus(model_size_b(wildcards), config["resources"])


def heavy_mem_mb(wildcards):
    return resources.heavy_mem_mb(model_size_b(wildcards), config["checkpoint_dtype"])


def heavy_runtime(wildcards):
    return resources.heavy_runtime(model_size_b(wildcards), config["resources"])


# Cross-key checks (after the schema; streamline/workflow/checks.py): contradictions stop the run with one line,
# questionable values warn.
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


def check_keyed_folders():
    """Warn for every keyed folder of this config whose settings.json was edited by hand or damaged, or that was
    deleted while results made from it are still there."""
    folders = VARIANTS.keyed_folders()
    for line in [*checks.settings_record_problems(folders), *checks.deleted_folders(folders)]:
        logger.warning(f"warning: {line}")


_checked(checks.check_sparsities, config["sparsities"])
_checked(checks.check_training_scales, config["training"])
for _line in _checked(checks.check_grids, VARIANTS):  # no target or no variant, top level and ablations alike
    logger.warning(f"warning: {_line}")
_checked(checks.check_limits, config["evaluation"])
_checked(checks.check_datasets, config, list(CALIBRATION_MIRROR_FILES))
check_seq_lens()
check_checkpoints()
check_keyed_folders()


# The experiment's plots and the paper items (rules/paper.smk; docs/paper.md), from their registries:
# streamline/reporting/plots.py FIGURES and streamline/reporting/paper.py ITEMS.
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
