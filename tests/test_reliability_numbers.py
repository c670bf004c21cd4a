"""Issue 27 (Reliability 3), items 1, 2, 4 and 5, in the library: no silently wrong number or plan, one line for
every failure of a job, no `fatal:` from the harness. Tiny models; the NaN/Inf fixtures are made here.

The workflow cases of items 3 and 6 (plugins and data as inputs, edited settings records, deleted folders,
ablation grids) are in tests/test_reliability_inputs3.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import MIRROR, TEXT, make_model, save_tiny_checkpoint

from streamline.acquisition.models import ModelSourceError, acquire_model, build_manifest
from streamline.atomic import read_json, write_json
from streamline.numerics import NonFiniteError, first_nonfinite
from streamline.pruning import criteria, plans, searches
from streamline.workflow.config_schema import defaults
from streamline.workflow.record_steps import prune_step
from streamline.workflow.runstep import logged_step
from streamline.workflow.steps import accuracy_step, perplexity_step, replace_step

RUN = {"dtype": "float32", "device": "cpu", "data_mirror": str(MIRROR)}
FLOAT32 = "computed in float32, so not a precision limit"


@pytest.fixture()
def fresh_registries(monkeypatch):
    from streamline.healing import kinds as healing_kinds

    monkeypatch.setattr(criteria, "CRITERIA", dict(criteria.CRITERIA))
    monkeypatch.setattr(healing_kinds, "HEALING_KINDS", dict(healing_kinds.HEALING_KINDS))


def poisoned_checkpoint(tokenizer, folder: Path, value: float = float("nan"), weight: str = "lm_head") -> Path:
    """A tiny checkpoint saved directly (as a healed one would be), with `value` in one weight."""
    model = make_model(len(tokenizer))
    with torch.no_grad():
        if weight == "lm_head":
            model.lm_head.weight[3, 5] = value
        else:
            model.model.layers[1].mlp.down_proj.weight.fill_(value)
    save_tiny_checkpoint(model, tokenizer, folder)
    # the manifest as acquisition would write it (build_manifest counts; it does not look at values)
    write_json(folder / "manifest.json", build_manifest(model, {"kind": "test"}, torch.float32))
    return folder


# --- 1. non-finite numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_acquisition_refuses_non_finite_weights_naming_the_tensor(tokenizer, tmp_path, value):
    source = poisoned_checkpoint(tokenizer, tmp_path / "src", value)
    with pytest.raises(ModelSourceError) as err:
        acquire_model("m", {"local": str(source)}, tmp_path / "out")
    assert str(err.value) == (
        f"model 'm' from local={str(source)!r}: weight 'lm_head.weight' holds 1 non-finite values (first: {value} at "
        "[3, 5]); a model with NaN/Inf weights is not acquired"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_json_files_never_hold_nan(tmp_path):
    with pytest.raises(NonFiniteError) as err:
        write_json(tmp_path / "ppl.json", {"perplexity": float("nan"), "windows": 2})
    assert str(err.value) == "ppl.json: perplexity is nan, not a finite number; nothing was written"
    with pytest.raises(NonFiniteError, match=r"scores.json: rows\[1\].score is -inf"):
        write_json(tmp_path / "scores.json", {"rows": [{"score": 1.0}, {"score": -math.inf}]})
    assert list(tmp_path.iterdir()) == []
    assert first_nonfinite({"t": torch.tensor([[0.0, 1.0], [float("inf"), 2.0]])}) == ("t[1, 0]", math.inf)


def test_perplexity_of_a_non_finite_model_stops_naming_it(tokenizer, tmp_path):
    model_dir = poisoned_checkpoint(tokenizer, tmp_path / "m")
    settings = {"dataset": "wikitext2", "seq_len": 32, "batch_size": 2, "max_windows": 2}
    with pytest.raises(NonFiniteError) as err:
        perplexity_step(model_dir=model_dir, settings=settings, run=RUN, out_path=tmp_path / "ppl.json")
    assert str(err.value).startswith(f"the perplexity result: perplexity is nan, not a finite number; {FLOAT32}")
    assert not (tmp_path / "ppl.json").exists()


@pytest.mark.slow
def test_accuracy_of_a_non_finite_model_stops_instead_of_scoring_chance(tokenizer, tmp_path):
    model_dir = poisoned_checkpoint(tokenizer, tmp_path / "m", float("inf"))
    evaluation = {**defaults("evaluation"), "tasks": ["piqa_mirror"], "limit": 2, "batch_size": 2}
    with pytest.raises(NonFiniteError) as err:
        accuracy_step(model_dir=model_dir, evaluation=evaluation, run=RUN, accuracy_path=tmp_path / "accuracy.json",
                      samples_dir=tmp_path / "samples")
    assert str(err.value) == (
        "evaluation task 'piqa_mirror' example 0: the model's answer (filtered_resps[0][0]) is nan, not a finite "
        "number (its outputs are NaN/Inf), so its accuracy would be meaningless"
    )
    assert not (tmp_path / "accuracy.json").exists()


def test_a_nan_layer_weight_is_not_blamed_on_precision_in_float32(tiny_model, tmp_path):
    from streamline.healing.replace import cache_pairs
    from streamline.importance.scores import accumulate

    tiny_model.model.layers[1].mlp.down_proj.weight.data.fill_(float("nan"))
    ids = torch.randint(0, 100, (2, 5))
    with pytest.raises(NonFiniteError) as err:
        cache_pairs(tiny_model, ids, 1, 3, tmp_path, 2)
    assert str(err.value).startswith(f"the hidden states entering/leaving layers 1..2 hold NaN/Inf ({FLOAT32}")
    with pytest.raises(NonFiniteError) as err:
        accumulate(tiny_model, [ids], progress=False)
    assert str(err.value).startswith(f"the hidden state h_2 (leaving layer 1) holds NaN/Inf ({FLOAT32}")
    with pytest.raises(NonFiniteError) as err:
        accumulate(tiny_model.to(torch.bfloat16), [ids], progress=False)
    assert "(an overflow in bfloat16? run with dtype: float32)" in str(err.value)


def test_a_nan_calibration_nll_stops_a_search(tiny_model):
    tiny_model.lm_head.weight.data[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"the calibration NLL is nan, not a finite number \(computed in float32"):
        searches.sleb_order(tiny_model, [torch.randint(0, 100, (2, 6))], lambda removed: len(removed) >= 1, False)


def linear_training(text_file: Path, lr: float) -> dict:
    return {
        **defaults("training"), "dataset": str(text_file), "samples": 6, "val_samples": 2, "seq_len": 16,
        "epochs": 1, "batch_size": 2, "lr": lr, "weight_decay": 0.0, "warmup_ratio": 0.0, "seed": 0,
        "shard_sequences": 4,
    }


def test_diverged_training_stops_before_the_checkpoint_is_marked_complete(tiny_checkpoint, tmp_path):
    """lr 1e30: the linear map's loss is no longer a number. Before, the best (= untrained) epoch was kept and
    compressed.json recorded NaN losses as a trained variant."""
    (tmp_path / "train.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "v"
    prune_step(scores=None, manifest_path=tiny_checkpoint / "manifest.json", sparsity=None, layers=2,
               healing="linear", method="last-n", settings={}, sparsity_of="layers", plan_path=out / "plan.json")
    with pytest.raises(NonFiniteError) as err:
        replace_step(model_dir=tiny_checkpoint, plan_path=out / "plan.json", healing="linear",
                     training=linear_training(tmp_path / "train.txt", 1e30), lora={}, run={**RUN, "data_mirror": None},
                     marker_path=out / "compressed.json", curve_path=out / "train_log.csv", pair_cache=None)
    assert str(err.value).startswith("healing 'linear': ")
    assert "not a finite number" in str(err.value) and "lower training.lr" in str(err.value)
    assert not (out / "compressed.json").exists() and not (out / "train_log.csv").exists()


# --- 2. plans checked against the model ------------------------------------------------------------------------------
BAD_CRITERIA = '''
import pandas as pd
from streamline.pruning.criteria import Criterion, register


def repeated_order(table, num_layers, settings):
    return [3, 3, 3, -1, 2, 1]


def beyond_the_model(table, num_layers, settings):
    rows = [(start, n, float(start), "cosine") for n in range(1, num_layers) for start in range(num_layers + 3)]
    return pd.DataFrame(rows, columns=["start_layer", "num_layers", "score", "metric"])


def a_string(table, num_layers, settings):
    return "3,4"


register(Criterion("repeated-order", "order", repeated_order))
register(Criterion("beyond-the-model", "window", beyond_the_model))
register(Criterion("a-string", "order", a_string))
'''


@pytest.mark.parametrize(
    ("method", "shown", "problem"),
    [
        ("repeated-order", "[3, 3, 3, -1, 2, 1]", "layer -1 is outside the model's layers 0..5"),
        ("beyond-the-model", "a DataFrame with columns ['start_layer', 'num_layers', 'score', 'metric']",
         "window start_layer=6, num_layers=1 lies outside the model's 6 layers (a window is 1..5 layers inside 0..5)"),
        ("a-string", "'3,4'", "an order criterion returns a list of layer indices"),
    ],
)
def test_a_plugins_wrong_result_is_named_before_any_plan(fresh_registries, tiny_checkpoint, tmp_path, method, shown,
                                                         problem):
    from streamline.workflow.plugins import load_plugins

    plugin = tmp_path / "bad_criteria.py"
    plugin.write_text(BAD_CRITERIA)
    load_plugins([str(plugin)])
    function = criteria.CRITERIA[method].layers.__qualname__
    with pytest.raises(ValueError) as err:
        prune_step(scores=None, manifest_path=tiny_checkpoint / "manifest.json", sparsity=0.3, layers=None,
                   healing="none", method=method, settings={}, sparsity_of="layers", plan_path=tmp_path / "plan.json")
    assert str(err.value) == f"criterion {method!r} (function {function} in {plugin}) returned {shown}: {problem}"
    assert not (tmp_path / "plan.json").exists()


def test_repeated_layers_of_an_order_are_named():
    criterion = criteria.Criterion("x", "order", lambda table, n, settings: None)
    with pytest.raises(ValueError, match=r"returned \[3, 3, 3, 2, 1\]: layer 3 appears 3 times; an order lists"):
        criteria.check_result(criterion, [3, 3, 3, 2, 1], 6)
    assert criteria.check_result(criterion, [torch.tensor(2).item(), 0], 6) == [2, 0]
    search = criteria.Criterion("s", "search", lambda model, batches, enough, settings: None)
    with pytest.raises(ValueError, match=r"returned \[1, 2\]: a search criterion returns a dict with 'order'"):
        criteria.check_search_record(search, [1, 2], 6)


def test_a_plan_whose_counts_disagree_with_its_layers_is_refused(tiny_checkpoint, tmp_path):
    manifest = read_json(tiny_checkpoint / "manifest.json")
    plan = prune_step(scores=None, manifest_path=tiny_checkpoint / "manifest.json", sparsity=None, layers=2,
                      healing="none", method="reverse", settings={}, sparsity_of="layers", plan_path=tmp_path / "p.json")
    assert plans.check_plan(plan, manifest) is plan
    wrong = {**plan, "removed_layers": [5, 5], "num_layers_removed": 2}
    with pytest.raises(ValueError, match=r"removed_layers \[5, 5\] are not distinct layers"):
        plans.check_plan(wrong, manifest)
    with pytest.raises(ValueError, match=r"params_after is 1, but its layers \[4, 5\] give \d+"):
        plans.check_plan({**plan, "params_after": 1}, manifest)


def test_lacos_chained_merges_pass_the_plan_check_and_a_merge_into_a_removed_layer_does_not(tiny_checkpoint):
    """LaCo's sweep moves down by interval 2 after merging a group of up to 4, so a later group merges the
    earlier base (a CI run refused base 5 <- [6] followed by base 3 <- [4, 5]; here on 6 layers)."""
    manifest = read_json(tiny_checkpoint / "manifest.json")
    chained = [{"base": 3, "merged": [4]}, {"base": 1, "merged": [2, 3]}]
    plan = {**plans.plan_order_layers([4, 2, 3], manifest, 3, "none", "layers", chained), "method": "laco"}
    assert plan["removed_layers"] == [2, 3, 4]
    assert plans.check_plan(plan, manifest) is plan
    truncated = {**plans.plan_order_layers([4, 2, 3], manifest, 2, "none", "layers", chained), "method": "laco"}
    assert truncated["merges"][1]["merged"] == [2] and truncated["removed_layers"] == [2, 4]
    assert plans.check_plan(truncated, manifest) is truncated  # 3 stays, holding 4's merge
    backwards = {**plan, "merges": list(reversed(chained))}
    with pytest.raises(ValueError, match=r"merges into layer 3, which the plan removes"):
        plans.check_plan(backwards, manifest)
    outside = {**plan, "merges": [{"base": 1, "merged": [5]}]}
    with pytest.raises(ValueError, match=r"merges layers that are not among removed_layers \[2, 3, 4\]"):
        plans.check_plan(outside, manifest)


@pytest.mark.parametrize("healing", ["none", "ffn"])
def test_the_checkpoint_is_checked_against_its_plan_after_surgery(tiny_checkpoint, tmp_path, monkeypatch, healing):
    """A surgery that silently removes nothing (as a window past the last layer once did) stops the job."""
    from streamline.healing import replace as replace_module

    (tmp_path / "train.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "v"
    prune_step(scores=None, manifest_path=tiny_checkpoint / "manifest.json", sparsity=None, layers=2,
               healing=healing, method="last-n", settings={}, sparsity_of="layers", plan_path=out / "plan.json")
    kwargs = {
        "model_dir": tiny_checkpoint, "plan_path": out / "plan.json", "healing": healing, "lora": {},
        "training": linear_training(tmp_path / "train.txt", 1e-3) if healing != "none" else {},
        "run": {**RUN, "data_mirror": None}, "curve_path": out / "train_log.csv", "pair_cache": None,
    }
    replace_step(**kwargs, marker_path=out / "compressed.json")  # the real surgery matches its plan
    plan = read_json(out / "plan.json")
    monkeypatch.setattr(replace_module, "drop_layers", lambda model, removed: None)
    if healing == "none":
        monkeypatch.setattr(replace_module, "apply_plan", lambda model, plan: None)
    with pytest.raises(ValueError) as err:
        replace_step(**kwargs, marker_path=tmp_path / "w" / "compressed.json")
    layers = plan["num_layers_after"]
    assert str(err.value) == (
        f"the compressed checkpoint {str(tmp_path / 'w')!r} does not match its plan: config.json num_hidden_layers "
        f"is {layers + 2}, the plan (2 layers removed of 6, healing {healing!r}) gives {layers}; the surgery or the "
        "healing kind's registry entry is wrong"
    )
    assert not (tmp_path / "w" / "compressed.json").exists()


# --- 4. one line for every failure -------------------------------------------------------------------------------------
def run_logged(tmp_path, capsys, body) -> str:
    """The terminal's stderr of a step that runs `body` inside logged_step (the job's log gets the traceback)."""
    capsys.readouterr()  # what came before the step
    with pytest.raises(SystemExit) as exit_info, logged_step(tmp_path / "job.log", "replace[tiny/streamline-ffn/s0.3]"):
        body()
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" in (tmp_path / "job.log").read_text()
    return lines[0]


def test_every_failure_of_a_job_is_one_line(tmp_path, capsys):
    def type_error():
        return len(5)

    line = run_logged(tmp_path, capsys, type_error)
    assert line.startswith("replace[tiny/streamline-ffn/s0.3]: TypeError: object of type 'int' has no len() (raised "
                           f"at {__file__} line ")
    assert line.endswith(f"traceback in {tmp_path / 'job.log'}")
    (tmp_path / "broken.py").write_text("def f(:\n")
    line = run_logged(tmp_path, capsys, lambda: compile((tmp_path / "broken.py").read_text(), str(tmp_path / "broken.py"),
                                                         "exec"))
    assert line == f"replace[tiny/streamline-ffn/s0.3]: {tmp_path / 'broken.py'} line 1 does not parse (invalid " \
                   "syntax): fix that Python file"
    line = run_logged(tmp_path, capsys, lambda: __import__("no_such_module_xyz"))
    assert line.startswith("replace[tiny/streamline-ffn/s0.3]: an import failed (module 'no_such_module_xyz'): No "
                           "module named 'no_such_module_xyz'")


def test_a_full_disk_during_a_safetensors_write_is_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """The patched writer raises what safetensors raises on a full disk (its Rust error text, os error 28)."""
    from safetensors import SafetensorError

    from streamline.workflow import steps

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr(steps, "save_file", full)
    calibration = {"dataset": "wikitext2", "samples": 2, "seq_len": 16, "batch_size": 2, "seed": 0}
    line = run_logged(tmp_path, capsys, lambda: steps.similarity_step(
        model_dir=tiny_checkpoint, out_path=tmp_path / "pairs.safetensors", calibration=calibration, run=RUN))
    assert line == (
        "replace[tiny/streamline-ffn/s0.3]: the disk is full (No space left on device) while writing the job's "
        "outputs; nothing partial was kept: free space (df -h results) or move results/ and TMPDIR to a larger disk, "
        "then run snakemake again"
    )
    assert not (tmp_path / "pairs.safetensors").exists()


def test_a_full_disk_for_real_on_a_small_tmpfs(tokenizer, tmp_path, capsys):
    """Where this machine lets the test mount a 256 KB tmpfs (root): acquisition's checkpoint does not fit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the patched writer covers the message")
    try:
        source = save_tiny_checkpoint(make_model(len(tokenizer)), tokenizer, tmp_path / "src")
        line = run_logged(tmp_path, capsys, lambda: acquire_model("m", {"local": str(source)}, disk / "m"))
        assert line.startswith("replace[tiny/streamline-ffn/s0.3]: the disk is full (No space left on device)")
        assert not (disk / "m" / "manifest.json").exists()
        assert [p.name for p in (disk / "m").iterdir()] == []  # the staging folder was removed
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_task_function_naming_a_missing_module_is_named(tmp_path):
    from streamline.evaluation.harness import check_tasks, task_manager

    (tmp_path / "my_task.yaml").write_text(textwrap.dedent("""\
        task: my_task
        dataset_path: json
        output_type: multiple_choice
        process_docs: !function my_utils.process_docs
        doc_to_text: "{{q}}"
        doc_to_choice: ["a", "b"]
        doc_to_target: 0
    """))
    manager = task_manager([tmp_path], MIRROR)
    with pytest.raises(ValueError) as err:
        check_tasks(manager, ["my_task"])
    assert str(err.value) == (
        f"evaluation task 'my_task': task file {str(tmp_path / 'my_task.yaml')!r} line 4: !function "
        f"my_utils.process_docs needs {str(tmp_path / 'my_utils.py')!r}, which does not exist"
    )
    (tmp_path / "my_utils.py").write_text("def process(docs):\n    return docs\n")
    with pytest.raises(ValueError, match=r"my_utils.py' defines no 'process_docs'"):
        check_tasks(manager, ["my_task"])
    (tmp_path / "my_utils.py").write_text("def process_docs(docs):\n    return docs\n")
    check_tasks(manager, ["my_task"])


def test_a_plugin_that_does_not_parse_is_one_line(fresh_registries, tmp_path):
    from streamline.workflow.plugins import PluginError, load_plugins, plugin_identity

    plugin = tmp_path / "broken.py"
    plugin.write_text("from streamline.pruning.criteria import register\nregister(\n")
    with pytest.raises(PluginError) as err:
        load_plugins([str(plugin)])
    assert str(err.value) == f"plugin {str(plugin)!r} does not parse: {plugin} line 2: '(' was never closed"
    plugin.write_text("import no_such_module_xyz\n")
    with pytest.raises(PluginError, match=rf"plugin '.*broken.py' failed to import at {plugin} line 1: "
                                          "ModuleNotFoundError: No module named 'no_such_module_xyz'"):
        load_plugins([str(plugin)])
    # a job refuses a plugin edited after the DAG (its key) was computed
    plugin.write_text("X = 1\n")
    keyed = plugin_identity(str(plugin))
    plugin.write_text("X = 2\n")
    with pytest.raises(PluginError, match="changed after this run's DAG was built"):
        load_plugins([keyed])


def test_experiment_names_are_limited_to_a_folder_name():
    import jsonschema

    from streamline.workflow.config_schema import error_line, validate

    with pytest.raises(jsonschema.ValidationError) as err:
        validate({"experiment": "a" * 300, "models": {"m": {"hf": "x"}}})
    assert error_line(err.value) == (
        "config error at experiment: 'aaaaaaaaaaaaaaaaaaaaaaaa'... has 300 characters; at most 64 allowed"
    )
    validate({"experiment": "a" * 64, "models": {"m": {"hf": "x"}}})


# --- 5. the harness's git lookup stays in the job log ------------------------------------------------------------------
@pytest.mark.slow
def test_accuracy_prints_no_git_fatal_outside_a_repository(tiny_checkpoint, tmp_path):
    """The harness runs `git describe` in the working directory; a user's results folder is no repository."""
    work = tmp_path / "work"
    work.mkdir()
    code = textwrap.dedent(f"""
        from streamline.workflow.config_schema import defaults
        from streamline.workflow.runstep import logged_step
        from streamline.workflow.steps import accuracy_step
        evaluation = {{**defaults("evaluation"), "tasks": ["piqa_mirror"], "limit": 2, "batch_size": 2}}
        with logged_step("job.log", "accuracy[tiny/dense]"):
            accuracy_step(model_dir={str(tiny_checkpoint)!r}, evaluation=evaluation, run={RUN!r},
                          accuracy_path="accuracy.json", samples_dir="samples")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=600, check=False,
                          env={"GIT_CEILING_DIRECTORIES": str(tmp_path), **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fatal" not in proc.stderr and "fatal" not in proc.stdout
    assert (work / "accuracy.json").is_file()
    assert "fatal: not a git repository" in (work / "job.log").read_text()  # kept where a reader looks for details
