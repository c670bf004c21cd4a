"""Issue 15, items 3 and 4: the registries of criteria and healing kinds, one source of defaults, and each rule
getting only the settings its job uses.

The workflow cases are Snakemake dry runs on a tiny local checkpoint. `snakemake --touch --forceall` records every
job's parameters without running it (outputs are written by hand), so a later dry run with a changed setting
names exactly the jobs whose parameters changed.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import MIRROR, REPO, dag_paths, make_model, make_tokenizer, save_tiny_checkpoint, snakemake_cmd

from streamline.atomic import read_json
from streamline.evaluation.stability import CORRECTNESS
from streamline.healing import kinds as healing_kinds
from streamline.healing.heal import run_healing
from streamline.healing.job import INIT_LAYERS, Caches, HealingJob
from streamline.healing.lm import LORA_DEFAULTS
from streamline.healing.recipes import DEFAULT_RECIPE, RECIPES
from streamline.healing.training import TrainConfig
from streamline.importance.windows import METRICS, window_table
from streamline.pruning import criteria, searches
from streamline.pruning.surgery import LACO_MERGES
from streamline.reporting import paper, plots
from streamline.workflow.config_schema import defaults, schema_file
from streamline.workflow.plugins import load_plugins
from streamline.workflow.record_steps import paper_step, prune_step

# A table-driven criterion a user adds in one file: the window with the LOWEST cosine (the opposite of streamline).
LOWEST_COSINE = '''
from streamline.pruning.criteria import Criterion, register


def lowest_cosine(table, num_layers, settings):
    """The importance table with its scores negated: its best window is the one of lowest cosine."""
    return table.assign(score=-table["score"])


register(Criterion("lowest-cosine", "window", lowest_cosine, metric="cosine"))
'''


@pytest.fixture()
def fresh_registries(monkeypatch):
    """Plugins registered inside a test leave the process's registries as they were."""
    monkeypatch.setattr(criteria, "CRITERIA", dict(criteria.CRITERIA))
    monkeypatch.setattr(healing_kinds, "HEALING_KINDS", dict(healing_kinds.HEALING_KINDS))


# --- the registries and the schema ----------------------------------------------------------------------------------
def test_schema_enums_are_the_registry_keys():
    properties = schema_file()["properties"]
    assert properties["methods"]["items"]["enum"] == list(criteria.CRITERIA)
    assert properties["replacements"]["items"]["enum"] == healing_kinds.replacement_names()
    assert (
        properties["healing"]["items"]["enum"]
        == healing_kinds.healing_choices()
        == [
            "none",
            "replacement",
            "lora",
            "lm-loss",
            "replaceme",
            "replaceme-cosine",
            "linearpatch",
            "last-layers",
        ]
    )
    assert properties["importance"]["properties"]["metrics"]["items"]["enum"] == list(METRICS)
    assert properties["laco"]["properties"]["merge"]["enum"] == list(LACO_MERGES)
    assert properties["training"]["properties"]["init_layer"]["enum"] == list(INIT_LAYERS)
    assert properties["training"]["properties"]["recipe"]["enum"] == list(RECIPES)
    assert properties["evaluation"]["properties"]["stability_correctness"]["enum"] == list(CORRECTNESS)


def test_what_each_healing_kind_needs():
    kinds = healing_kinds.HEALING_KINDS
    assert {name for name, kind in kinds.items() if kind.decoder_layer} == {
        "swiglu",
        "layer",
        "swiglu-bestfit",
        "layer-bestfit",
        "lm-loss",
    }
    assert [name for name, kind in kinds.items() if not kind.window] == ["none", "lora", "last-layers"]
    assert {name: kind.settings for name, kind in kinds.items()} == {
        "none": (),
        "linear": ("training",),
        "ffn": ("training",),
        "swiglu": ("training", "init_layer"),
        "layer": ("training", "init_layer"),
        "swiglu-bestfit": ("training",),
        "layer-bestfit": ("training",),
        "lora": ("training", "lora"),
        "lm-loss": ("training", "init_layer"),
        "replaceme": ("training_data",),
        "replaceme-cosine": ("training_data",),
        "linearpatch": ("training_data",),
        "last-layers": ("training",),
    }
    assert kinds["lm-loss"].module == kinds["layer-bestfit"].module == "layer"


def test_what_each_criterion_needs():
    table = {name: (c.kind, c.metric, c.settings) for name, c in criteria.CRITERIA.items()}
    assert table == {
        "streamline": ("window", "cosine", ()),
        "gromov": ("window", "angular_last", ()),
        "last-n": ("window", None, ()),
        "reverse": ("order", None, ()),
        "shortgpt": ("order", "cosine", ()),
        "random": ("order", None, ("search.seed",)),
        "sleb": ("search", None, ()),
        "shortened-ppl": ("search", None, ()),
        "laco": ("search", None, ("laco",)),
        "ppl-window": ("search", None, ()),
    }
    assert criteria.settings_of(criteria.get("random"), {"search": {"seed": 7, "samples": 8}}) == {"search.seed": 7}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (criteria.Criterion("streamline", "window", print), "criterion 'streamline' is already registered"),
        (criteria.Criterion("Big_Name", "window", print), "criterion name 'Big_Name' is not lower-case words"),
        (criteria.Criterion("x", "table", print), "criterion 'x': kind 'table' is unknown; allowed: window, order"),
        (criteria.Criterion("x", "order", print, metric="cos"), "criterion 'x': metric 'cos' is unknown; allowed"),
    ],
)
def test_a_bad_criterion_fails_at_registration(fresh_registries, entry, message):
    with pytest.raises(ValueError, match=message):
        criteria.register(entry)


def test_a_bad_healing_kind_fails_at_registration(fresh_registries):
    with pytest.raises(ValueError, match="healing kind 'x': module 'conv' is unknown; allowed: linear, ffn"):
        healing_kinds.register(healing_kinds.HealingKind("x", module="conv"))
    with pytest.raises(ValueError, match="healing kind 'x': init 'best_fit' needs a module of swiglu, layer"):
        healing_kinds.register(healing_kinds.HealingKind("x", module="ffn", init="best_fit"))
    with pytest.raises(ValueError, match="healing kind 'x': trains 'fit' needs a fit of replaceme-lstsq"):
        healing_kinds.register(healing_kinds.HealingKind("x", trains="fit"))
    with pytest.raises(ValueError, match="healing kind 'x': fit 'linearpatch' stores module linear, not ffn"):
        healing_kinds.register(healing_kinds.HealingKind("x", module="ffn", trains="fit", fit="linearpatch"))
    with pytest.raises(ValueError, match="healing kind 'x': the LM loss without a module trains lora or last_layers"):
        healing_kinds.register(healing_kinds.HealingKind("x", trains="lm"))
    with pytest.raises(ValueError, match="healing kind 'x': last_layers needs trains 'lm', no module and no lora"):
        healing_kinds.register(healing_kinds.HealingKind("x", trains="lm", lora=True, last_layers=2))


def test_a_job_gets_exactly_the_registered_settings(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"criterion 'random' reads the settings \['search.seed'\], not \[\]"):
        prune_step(
            scores=None,
            manifest_path=tiny_checkpoint / "manifest.json",
            sparsity=0.3,
            layers=None,
            healing="none",
            method="random",
            settings={},
            sparsity_of="layers",
            plan_path=tmp_path / "p.json",
        )


# --- one source of defaults ---------------------------------------------------------------------------------------
def parameter_default(function, name):
    return inspect.signature(function).parameters[name].default


def test_library_defaults_are_the_schema_defaults():
    training, laco, lora = defaults("training"), defaults("laco"), defaults("lora")
    assert TrainConfig.from_settings(training) == TrainConfig()  # every schema field of TrainConfig
    assert LORA_DEFAULTS == lora
    assert {key: parameter_default(searches.laco_merges, key) for key in laco} == laco
    for function in (run_healing, HealingJob):
        assert parameter_default(function, "init_layer") == training["init_layer"]
    assert Caches().shard_sequences == training["shard_sequences"]
    assert (training["recipe"], DEFAULT_RECIPE) == ("project", RECIPES[0])
    for function in (plots.save, paper.write_item, paper_step):  # the figures' resolution: config plots.dpi only
        assert parameter_default(function, "dpi") is inspect.Parameter.empty


def test_no_module_imports_a_streamline_module_inside_a_function_to_dodge_a_circle():
    """A function-level `from streamline.x import ...` is allowed only where x does not import the module back
    (a deferred heavy import, e.g. lm-eval for the accuracy step, not a circle). Modules are named by their
    dotted path (`pruning.criteria`)."""
    package = REPO / "streamline"
    modules = {
        ".".join(path.relative_to(package).with_suffix("").parts): path
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    }

    def imports(path: Path, top_level: bool) -> set[str]:
        tree = ast.parse(path.read_text())
        nodes = (
            tree.body
            if top_level
            else [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)]
        )
        found = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamline"):
                base = node.module.removeprefix("streamline").lstrip(".")
                found |= {f"{base}.{alias.name}".lstrip(".") for alias in node.names} | {base}
        return found & set(modules)

    top = {name: imports(path, True) for name, path in modules.items()}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for name in top.get(todo.pop(), ()):
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
        return seen

    circles = [
        f"{name} -> {other}"
        for name, path in modules.items()
        for other in imports(path, False)
        if name in reaches(other)
    ]
    assert circles == []
    assert len(modules) > 30 and "pruning.criteria" in reaches("workflow.steps")  # the walk sees the subpackages
    shared = {"atomic", "data", "notice", "numerics", "provenance", "scratch"}
    assert {name for s in shared for name in reaches(s)} <= shared | {"acquisition.models", "acquisition.families",
                                                                      "acquisition.checkpoint"}
    assert "pruning.criteria" not in reaches("pruning.plans")  # they used to import each other from inside functions


# --- a criterion added in one file ---------------------------------------------------------------------------------
def test_plugin_criterion_plans_the_lowest_cosine_window(fresh_registries, tiny_checkpoint, tmp_path):
    (tmp_path / "lowest_cosine.py").write_text(LOWEST_COSINE)
    assert load_plugins([str(tmp_path / "lowest_cosine.py")]) == {"lowest-cosine": str(tmp_path / "lowest_cosine.py")}
    pair_mean = torch.rand(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = window_table((pair_mean + pair_mean.T) / 2, "cosine")  # 6 layers -> states h_0..h_6
    table.to_csv(tmp_path / "cosine.csv", index=False)
    plans = {}
    for method in ("lowest-cosine", "streamline"):
        plans[method] = prune_step(
            scores=tmp_path / "cosine.csv",
            manifest_path=tiny_checkpoint / "manifest.json",
            sparsity=None,
            layers=2,
            healing="linear",
            method=method,
            settings={},
            sparsity_of="layers",
            plan_path=tmp_path / method / "plan.json",
        )
    pairs = table[table["num_layers"] == 2].set_index("start_layer")["score"]
    assert (
        plans["lowest-cosine"]["start_layer"] == pairs.idxmin() != pairs.idxmax() == plans["streamline"]["start_layer"]
    )
    assert read_json(tmp_path / "lowest-cosine" / "plan.json")["method"] == "lowest-cosine"


# --- the workflow: plugin in the DAG, and each rule gets only its settings ----------------------------------------------
METHODS = ["streamline", "shortgpt", "random", "sleb", "laco", "lowest-cosine"]


def keyed_paths(workdir: Path, config: dict) -> dict[str, str]:
    """The config's keyed paths (README, "Experiments"): each method's plan, the importance outputs, the orders."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    patterns = {m: f"results/compressed/tiny/{m}-none/s0.25/*/plan.json" for m in METHODS}
    patterns |= {f"{m}_order": f"results/importance/tiny/*/{m}_order.json" for m in ("sleb", "laco")}
    patterns["importance"] = "results/importance/tiny/*/pair_similarity.safetensors"
    found = dag_paths(workdir, workdir / "config.yaml", *patterns.values())
    assert len(found) == len(patterns), found
    return dict(zip(patterns, found))


def snakemake(workdir: Path, config: dict, *args: str) -> str:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        snakemake_cmd(workdir, workdir / "config.yaml", "--cores", "1", *args),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    return text


def rerun_outputs(text: str) -> set[str]:
    """The first output of every job a dry run would run."""
    outputs, rule = set(), None
    for line in text.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line
        elif rule and line.strip().startswith("output:"):
            outputs.add(line.split(":", 1)[1].split(",")[0].strip())
            rule = None
    return outputs


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A workdir whose plans for METHODS are recorded as made (by --touch), with the plugin's plan really made."""
    workdir = tmp_path_factory.mktemp("registry")
    tokenizer = make_tokenizer()
    save_tiny_checkpoint(make_model(len(tokenizer), num_layers=8), tokenizer, workdir / "tiny-src")
    (workdir / "lowest_cosine.py").write_text(LOWEST_COSINE)
    config = {
        "models": {"tiny": {"local": str(workdir / "tiny-src")}},
        "data_mirror": str(MIRROR),
        "calibration": {"seq_len": 32},
        "perplexity": {"seq_len": 64},
        "sparsities": [0.25],
        "methods": METHODS,
        "healing": ["none"],
        "search": {"samples": 2, "seq_len": 16, "seed": 0},
        "laco": {"merge_layers": 2, "threshold": 0.5},
        "plugins": ["lowest_cosine.py"],
    }
    # Every output up to the plans, written by hand: real ones where the plugin's prune job reads them.
    paths = keyed_paths(workdir, config)
    importance = str(Path(paths["importance"]).parent)
    pair_mean = torch.rand(9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outputs = {
        "results/models/tiny/manifest.json": (workdir / "tiny-src" / "manifest.json").read_text(),
        f"{importance}/cosine.csv": window_table((pair_mean + pair_mean.T) / 2, "cosine").to_csv(index=False),
    }
    extra = [
        "results/models/tiny/provenance.json",
        f"{importance}/pair_similarity.safetensors",
        f"{importance}/provenance.json",
        f"{importance}/cosine.png",
    ]
    for m in ("sleb", "laco"):
        extra += [paths[f"{m}_order"], paths[f"{m}_order"].replace("_order.json", "_provenance.json")]
    extra += [paths[m] for m in METHODS]
    future = time.time() + 5
    for name in [*outputs, *extra]:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs.get(name, "{}"))
        os.utime(path, (future, future))
    targets = [paths[m] for m in METHODS]
    snakemake(workdir, config, "--touch", "--forceall", *targets)  # records every job's params, runs nothing
    (workdir / paths["lowest-cosine"]).unlink()
    snakemake(workdir, config, paths["lowest-cosine"])  # the one real job: the plugin's plan
    return workdir, config, paths


@pytest.mark.slow
def test_plugin_criterion_is_in_the_dag_and_plans(planned):
    workdir, config, paths = planned
    targets = [paths[m] for m in METHODS]
    plan = read_json(workdir / paths["lowest-cosine"])
    table = pd.read_csv(Path(workdir / paths["importance"]).parent / "cosine.csv")
    windows = table[table["num_layers"] == plan["num_layers_removed"]].set_index("start_layer")["score"]
    assert plan["method"] == "lowest-cosine" and plan["start_layer"] == windows.idxmin()
    assert rerun_outputs(snakemake(workdir, config, "-n", *targets)) == set()  # the plans are up to date
    text = snakemake(workdir, config, "-n")  # the default target: all.csv, tables and plots
    variant = str(Path(paths["lowest-cosine"]).parent).removeprefix("results/compressed/")  # tiny/.../s0.25/{key}
    assert f"results/compressed/{variant}/compressed.json" in text
    for step, name in (("accuracy", "accuracy.json"), ("perplexity", "ppl.json"), ("stability", "stability.json")):
        assert re.search(f"results/eval/{variant}/{step}-[0-9a-f]{{8}}/{name}", text)


@pytest.mark.slow
def test_search_seed_replans_only_random_and_the_searches(planned):
    """`search.seed` is random's seed and the search criteria's calibration seed: nothing else re-runs (their
    plans and orders get new keys, the other plans keep theirs)."""
    workdir, config, paths = planned
    changed = {**config, "search": {**config["search"], "seed": 1}}
    new = keyed_paths(workdir, changed)
    moved = {"random", "sleb", "laco", "sleb_order", "laco_order"}
    assert {name for name in paths if new[name] != paths[name]} == moved
    assert rerun_outputs(snakemake(workdir, changed, "-n", *(new[m] for m in METHODS))) == {new[n] for n in moved}


@pytest.mark.slow
def test_laco_settings_reach_only_laco(planned):
    workdir, config, paths = planned
    changed = {**config, "laco": {**config["laco"], "threshold": 0.9}}
    new = keyed_paths(workdir, changed)
    assert {name for name in paths if new[name] != paths[name]} == {"laco", "laco_order"}
    assert rerun_outputs(snakemake(workdir, changed, "-n", *(new[m] for m in METHODS))) == {
        new["laco_order"],
        new["laco"],
    }
