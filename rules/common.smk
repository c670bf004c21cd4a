# Config validation, wildcard constraints, input functions and target lists shared by every rule.
import math

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from streamline.criteria import METHOD_METRIC, SEARCH_METHODS, WINDOW_METHODS
from streamline.provenance import config_hash as config_hash_of
from streamline.prune import HEALINGS
from streamline.replace import LAYER_INIT_KINDS


def _validate_config(config, schema):
    """Validate (and fill defaults); a bad value stops the run with one line naming it."""
    try:
        validate(config, schema)
    except WorkflowError as err:
        cause = err.__context__  # snakemake raises its WorkflowError while handling the ValidationError
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in cause.absolute_path).lstrip(".")
        raise SystemExit(f"config error at {where or 'top level'}: {cause.message}")


_validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

HEALING_RE = "|".join(HEALINGS)
MODELS = list(config["models"])
CONDA_ENV = "../envs/streamline.yaml"
# Threads of a model-running job; Snakemake caps it at --cores, so on a laptop these jobs run one at a time.
HEAVY_THREADS = 8



def sparsity_tag(value):
    """0.25 -> '0.25' (the s{sparsity} folder name)."""
    return f"{float(value):g}"


def healings_for(method):
    """The healing kinds that apply to `method`, in config order."""
    window = method in WINDOW_METHODS
    kinds = []
    for healing in config["healing"]:
        if healing == "replacement":
            kinds += [r for r in config["replacements"] if window or r == "none"]
        elif healing != "lm-loss" or window:
            kinds.append(healing)
    return list(dict.fromkeys(kinds))


def compressed_variants():
    return [
        f"{method}-{healing}/s{sparsity_tag(s)}"
        for method in config["methods"]
        for healing in healings_for(method)
        for s in config["sparsities"]
    ]


def all_variants():
    return ["dense", *compressed_variants()]


def healing_training(wildcards):
    """Training settings reach only the variants that train, so `none` is not re-run when they change;
    `init_layer` reaches only the replacements initialised from a pruned layer."""
    if wildcards.healing == "none":
        return {}
    if wildcards.healing in LAYER_INIT_KINDS:
        return config["training"]
    return {key: value for key, value in config["training"].items() if key != "init_layer"}


def healing_lora(wildcards):
    return config["lora"] if wildcards.healing == "lora" else {}


def model_source(wildcards):
    """The source keys of a model's entry (size_b only sizes cluster jobs and must not re-trigger acquisition)."""
    entry = config["models"][wildcards.model]
    return {key: entry[key] for key in ("hf", "revision", "local", "gguf") if key in entry}


def checkpoint_marker(wildcards):
    """The file whose existence means the variant's checkpoint folder is complete."""
    if wildcards.variant == "dense":
        return f"results/models/{wildcards.model}/manifest.json"
    return f"results/compressed/{wildcards.model}/{wildcards.variant}/compressed.json"


def prune_scores(wildcards):
    """What a method's plan is made from: its layer order (search methods) or an importance table."""
    if wildcards.method in SEARCH_METHODS:
        return f"results/importance/{wildcards.model}/{wildcards.method}_order.json"
    return f"results/importance/{wildcards.model}/{METHOD_METRIC[wildcards.method]}.csv"


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


def model_size_b(wildcards):
    """Billions of parameters: models.NAME.size_b, else 1 (the manifest is not known before the DAG runs)."""
    return float(config["models"][wildcards.model].get("size_b", 1.0))


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
