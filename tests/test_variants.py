"""Issue 23, item 4: the variant and settings-key logic of rules/common.smk as a tested package module
(streamline/workflow/variants.py, checks.py, inputs.py, resources.py), checked without running Snakemake."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import MIRROR, REPO

from streamline.provenance import settings_key
from streamline.workflow import checks, inputs, resources
from streamline.workflow.checks import ConfigError
from streamline.workflow.config_schema import validate
from streamline.workflow.variants import Experiment, keyed, target_of, target_tags


def config_of(**overrides) -> dict:
    """config.yaml with `overrides`, validated (the schema's defaults filled) as the workflow validates it."""
    config = yaml.safe_load((REPO / "config.yaml").read_text()) | overrides
    validate(config)
    return config


def test_the_default_configs_keys_are_unchanged():
    """The keys of config.yaml's variants and folders, as the workflow computed them before the logic moved here
    (a dry run of `snakemake -n --forceall` at a0e123b), except accuracy and stability: `evaluation.scorer`
    (issue 22.3, default shared) is a setting of the accuracy step since edf86aa, `evaluation.limit` went from 100
    to 500 (issue 22.4; with limit 100 the keys are ad7ff3b1 and ca918000), and stability reads accuracy."""
    experiment = Experiment(config_of())
    assert experiment.compressed_variants() == [
        "streamline-none/s0.25/9218b0a2",
        "streamline-ffn/s0.25/6b3e2995",
        "streamline-swiglu/s0.25/b16b620d",
        "streamline-layer/s0.25/a82488d4",
    ]
    assert experiment.importance_dir("smollm2-135m") == "results/importance/smollm2-135m/d7f10ceb"
    assert [experiment.eval_dir("m", "dense", s) for s in ("accuracy", "perplexity", "model_stats", "stability")] == [
        "results/eval/m/dense/accuracy-1d3399fc",  # 68b15cbd before evaluation.scorer, ad7ff3b1 at limit 100
        "results/eval/m/dense/perplexity-d720e286",
        "results/eval/m/dense/model_stats-183d9644",
        "results/eval/m/dense/stability-e70878fc",  # 10ceb7e3 before, ca918000 at limit 100
    ]


def test_a_variant_key_is_the_hash_of_exactly_its_settings():
    config = config_of(methods=["streamline", "shortgpt"], replacements=["none", "ffn"], sparsities=[0.25],
                       prune_layers=[3])
    experiment = Experiment(config)
    table = experiment.variant_table
    # shortgpt removes no window: ffn is dropped for it; l3 and s0.25 for every pair
    assert [name.rsplit("/", 1)[0] for name in table] == [
        "streamline-none/s0.25", "streamline-none/l3", "streamline-ffn/s0.25", "streamline-ffn/l3",
        "shortgpt-none/s0.25", "shortgpt-none/l3",
    ]
    entry = table[next(n for n in table if n.startswith("streamline-ffn/l3/"))]
    assert entry["key"] == settings_key(entry["settings"]) and entry["scale"] == 1
    settings = entry["settings"]
    importance = f"results/importance/{{model}}/{settings_key(experiment.similarity_settings())}"
    assert settings["scores"] == f"{importance}/cosine.csv"
    assert settings["prune"] == {"target": {"sparsity": None, "layers": 3}, "sparsity_of": "layers", "settings": {},
                                 "plugins": []}
    training = dict(config["training"])
    del training["scales"], training["init_layer"]  # ffn starts from no layer: init_layer does not reach it
    del training["recipe"]  # the default recipe reaches no job (keys unchanged)
    assert settings["replace"]["training"] == training
    none = table[next(n for n in table if n.startswith("streamline-none/l3/"))]["settings"]["replace"]
    assert none["training"] == {} and none["lora"] == {}  # nothing trains: training settings never re-run it


def test_training_settings_per_kind_and_budget():
    config = config_of(training={"samples": 64, "scales": [1, 2]})
    experiment = Experiment(config)
    assert experiment.training_settings("none", None) == {}
    fit = experiment.training_settings("replaceme", 2)
    assert set(fit) == {"dataset", "samples", "val_samples", "seq_len", "seed", "batch_size", "shard_sequences",
                        "scratch_dir"}
    assert fit["samples"] == 128  # scale x training.samples
    assert "init_layer" in experiment.training_settings("layer", 1)
    assert "init_layer" not in experiment.training_settings("layer-bestfit", 1)


def test_ablation_grids_fill_the_top_levels_keys():
    config = config_of(methods=["streamline"], sparsities=[0.25], prune_layers=[2], healing=["none"],
                       ablations=[{"sparsities": [0.5]}, {"methods": ["last-n"], "healing": ["replacement"],
                                                          "replacements": ["ffn"]}])
    experiment = Experiment(config)
    top, first, second = experiment.grids()
    assert top["scales"] == [1]
    assert first["sparsities"] == [0.5] and first["prune_layers"] == []  # naming one target kind clears the other
    assert target_tags(second) == ["s0.25", "l2"] and second["methods"] == ["last-n"]
    assert experiment.search_targets() == {"max_sparsity": 0.5, "max_layers": 2, "sparsity_of": "layers"}
    names = [n.rsplit("/", 1)[0] for n in experiment.compressed_variants()]
    assert names == ["streamline-none/s0.25", "streamline-none/l2", "streamline-none/s0.5", "last-n-ffn/s0.25",
                     "last-n-ffn/l2"]


def test_targets_and_keys():
    assert target_of("s0.25") == {"sparsity": 0.25, "layers": None}
    assert target_of("l8") == {"sparsity": None, "layers": 8}
    settings = {"a": 1}
    assert keyed(settings_key(settings), settings, "x") is settings
    with pytest.raises(ValueError, match="x: the folder key 00000000 is not the key of this config's settings"):
        keyed("00000000", settings, "x")
    with pytest.raises(ValueError, match="variant m/streamline-none/s0.25/00000000 is not one of this config's"):
        Experiment(config_of()).variant("m", "streamline-none/s0.25/00000000")


def test_a_plugins_identity_is_in_the_keys_of_the_jobs_that_import_it():
    identity = {"entry": "my.py", "sha256": "ab" * 32}
    config = config_of(methods=["streamline", "random"], replacements=["none"])
    plain = Experiment(config)
    edited = Experiment(config, {"random": {**identity, "sha256": "cd" * 32}})
    plugged = Experiment(config, {"random": identity})
    assert plugged.variant_table != plain.variant_table
    assert plugged.plugin_ids("random", "none") == [identity] and plugged.plugin_ids("streamline") == []
    moved = {n.split("/")[0] for n in plugged.variant_table} ^ {n.split("/")[0] for n in plain.variant_table}
    assert moved == set()  # the same variants by name ...
    changed = set(plugged.variant_table) ^ set(edited.variant_table)
    assert {n.split("/")[0] for n in changed} == {"random-none"}  # ... and only the plugin's get other keys


def test_eval_settings_and_entries():
    experiment = Experiment(config_of(replacements=["none"]))
    accuracy = experiment.eval_settings("accuracy")
    assert "stability_correctness" not in accuracy["evaluation"]
    stability = {"correctness": "acc_ppl", "accuracy": experiment.eval_key("accuracy")}
    assert experiment.eval_settings("stability") == stability
    with pytest.raises(ValueError, match="evaluation step 'speed' is unknown"):
        experiment.eval_settings("speed")
    [dense, variant] = experiment.aggregate_entries()
    assert dense["variant_key"] == "" and dense["compressed"] is None
    assert variant["compressed"] == f"results/compressed/smollm2-135m/{variant['variant']}/compressed.json"
    assert variant["accuracy"] == f"{experiment.eval_dir('smollm2-135m', variant['variant'], 'accuracy')}/accuracy.json"
    folders = experiment.keyed_folders()
    assert len(folders) == 1 + 1 + 2 * 4  # importance, one variant, four eval steps of dense and of the variant
    assert folders[experiment.importance_dir("smollm2-135m")][1].endswith("/pair_similarity.safetensors")


# --- checks ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sparsities": [], "prune_layers": []},
         "config error at sparsities: empty, and prune_layers is empty too; name at least one target"),
        ({"ablations": [{"sparsities": []}]},
         "config error at ablations[0]: no target: sparsities and prune_layers are both empty; name at least one"),
        ({"methods": ["shortgpt"], "healing": ["replacement"], "replacements": ["ffn"]},
         ("config error at healing: no compressed variant is left (healing ffn dropped for shortgpt: it applies "
          "only to window methods (streamline, gromov, last-n, ppl-window))")),
        ({"replacements": ["none"], "ablations": [{"methods": ["shortgpt"], "healing": ["lm-loss"]}]},
         ("config error at ablations[0]: no compressed variant is left (healing lm-loss dropped for shortgpt: it "
          "applies only to window methods (streamline, gromov, last-n, ppl-window))")),
        ({"ablations": [{"sparsities": [0.3, 0.3000001]}]},
         ("config error at ablations[0].sparsities[1]: 0.3000001 and 0.3 both give the folder s0.3; sparsities "
          "must differ within 6 significant digits")),
    ],
    ids=["top-no-target", "ablation-no-target", "top-no-variant", "ablation-no-variant", "ablation-sparsity"],
)
def test_grids_without_targets_or_variants_are_refused_alike(overrides, message):
    with pytest.raises(ConfigError) as err:
        checks.check_grids(Experiment(config_of(**overrides)))
    assert str(err.value) == message


def test_dropped_combinations_warn_for_every_grid():
    config = config_of(methods=["streamline", "shortgpt"], replacements=["none", "ffn"],
                       ablations=[{"methods": ["shortgpt", "last-n"], "healing": ["replacement", "lm-loss"]}])
    assert checks.check_grids(Experiment(config)) == [
        "healing ffn dropped for shortgpt: it applies only to window methods (streamline, gromov, last-n, ppl-window)",
        ("ablations[0]: healing ffn, lm-loss dropped for shortgpt: they apply only to window methods (streamline, "
         "gromov, last-n, ppl-window)"),
    ]


COMMON = ("edited by hand or damaged; the folder's results are those of the settings its key hashes (the record only "
          "documents them); ")


def test_settings_records_edited_or_damaged_are_named(tmp_path):
    from streamline.provenance import write_settings

    experiment = Experiment(config_of(replacements=["none"]))
    folders = experiment.keyed_folders()
    [variant] = [f for f in folders if f.startswith("results/compressed/")]
    importance = experiment.importance_dir("smollm2-135m")
    accuracy = experiment.eval_dir("smollm2-135m", "dense", "accuracy")
    for folder in (variant, importance, accuracy):
        write_settings(tmp_path / folder, folders[folder][0])
    assert checks.settings_record_problems(folders, tmp_path) == []
    record = json.loads((tmp_path / variant / "settings.json").read_text())
    record["settings"]["prune"]["sparsity_of"] = "all"
    (tmp_path / variant / "settings.json").write_text(json.dumps(record))
    (tmp_path / importance / "settings.json").write_text('{"key": "d7f1')
    record = json.loads((tmp_path / accuracy / "settings.json").read_text())
    (tmp_path / accuracy / "settings.json").write_text(json.dumps({**record, "key": "00000000"}))
    lines = checks.settings_record_problems(folders, tmp_path)
    tail = "to rewrite it: snakemake --forcerun {} (re-runs that job and what depends on it)"
    assert lines == [
        f"{importance}/settings.json does not parse (Unterminated string starting at: line 1 column 9 (char 8)): "
        + COMMON + tail.format(f"{importance}/pair_similarity.safetensors"),
        f"{accuracy}/settings.json names the key '00000000', not the folder's '{accuracy[-8:]}': "
        + COMMON + tail.format(f"{accuracy}/accuracy.json"),
        f"{variant}/settings.json records other settings than the ones the folder's key stands for: "
        + COMMON + tail.format(f"{variant}/plan.json"),
    ]


def test_a_deleted_folder_is_named_while_what_was_made_from_it_is_there(tmp_path):
    experiment = Experiment(config_of(replacements=["none"]))
    folders = experiment.keyed_folders()
    [variant] = [f for f in folders if f.startswith("results/compressed/")]
    assert folders[experiment.importance_dir("smollm2-135m")][2] == [variant]  # its plan is made from the table
    name = variant.removeprefix("results/compressed/smollm2-135m/")
    accuracy, stability = (experiment.eval_dir("smollm2-135m", name, step) for step in ("accuracy", "stability"))
    assert checks.deleted_folders(folders, tmp_path) == []  # nothing was ever built: nothing is missing
    (tmp_path / stability).mkdir(parents=True)
    line = ("keyed folder {} is missing (deleted?) but {} was made from it; both stay as they are until a job needs "
            "it; to rebuild it and re-run what was made from it: snakemake --forcerun {}")
    assert checks.deleted_folders(folders, tmp_path) == [
        line.format(accuracy, stability, f"{accuracy}/accuracy.json"),
        line.format(variant, stability, f"{variant}/plan.json"),
    ]


def test_model_sources_limits_and_scales():
    with pytest.raises(ConfigError, match=r"config error at models.m: give exactly one of hf, local, gguf \(got hf, "):
        checks.check_model_sources({"m": {"hf": "a", "local": "b"}})
    with pytest.raises(ConfigError, match=r"config error at evaluation.limits.piqa: 'piqa' names no task"):
        checks.check_limits({"tasks": ["piqa_mirror"], "limits": {"piqa": 3}})
    with pytest.raises(ConfigError, match=r"training.scales\[0\]: 0.5 x training.samples 3 = 1.5 sequences"):
        checks.check_training_scales({"samples": 3, "scales": [0.5]})


# --- inputs and resources ----------------------------------------------------------------------------------------
def test_the_files_each_job_reads(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("words")
    config = config_of(data_mirror=str(MIRROR), calibration={"dataset": str(text)},
                       evaluation={"tasks": ["piqa_mirror", "hellaswag_mirror"]})
    assert inputs.calibration_files(config) == [str(text)]
    assert inputs.training_files(config, "none") == []
    assert inputs.training_files(config, "ffn") == [str(MIRROR / "wikitext-2-raw/wikitext2_train_5k.txt")]
    assert inputs.perplexity_files(config) == [str(MIRROR / "wikitext-2-raw/test.jsonl")]
    tasks = inputs.task_files(config)
    assert str(REPO / "tasks/mirror/piqa_mirror.yaml") in tasks and str(REPO / "tasks/mirror/mirror_data.py") in tasks
    mirror = [t for t in tasks if t.startswith(str(MIRROR))]
    assert mirror == [str(MIRROR / "hellaswag/hellaswag_val_full.jsonl"), str(MIRROR / "piqa/valid_with_labels.jsonl")]
    hub = config_of(data_mirror=None)
    assert inputs.calibration_files(hub) == inputs.perplexity_files(hub) == []


def test_cluster_resources_from_the_model_size():
    cluster = {"gpu": "auto", "gpu_mem_gb": 80, "runtime_min_per_b": 20}
    assert resources.heavy_gpus(0.135, cluster) == 0 and resources.heavy_gpus(70.6, cluster) == 3
    assert resources.heavy_mem_mb(6.74, "bfloat16") == 22041
    assert resources.heavy_runtime(6.74, cluster) == int(30 + 20 * 6.74)
    assert resources.model_size_b({"size_b": 7}, 1.2) == 7.0 and resources.model_size_b({}, None) == 1.0
