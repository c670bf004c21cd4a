import pandas as pd
import pytest

from streamline.reporting.collect import COLUMNS
from streamline.reporting.tables import main_table, stability_markdown, stability_table, to_latex, to_markdown


def rows(method, healing, sparsity, values, stability=None):
    """Tidy all.csv rows for one variant: {(task, metric): value} plus per-task stability."""
    entries = list(values.items()) + [((task, "stability"), value) for task, value in (stability or {}).items()]
    variant = {"model": "m", "method": method, "healing": healing, "target_sparsity": sparsity}
    return [{**variant, "task": task, "metric": metric, "value": value} for (task, metric), value in entries]


@pytest.fixture()
def table():
    data = (
        rows(
            "dense",
            "none",
            0.0,
            {
                ("piqa", "acc"): 0.70,
                ("piqa", "acc_norm"): 0.72,
                ("boolq", "acc"): 0.60,
                ("wikitext2", "perplexity"): 20.0,
            },
        )
        + rows(
            "streamline",
            "none",
            0.25,
            {("piqa", "acc"): 0.50, ("piqa", "acc_norm"): 0.52, ("boolq", "acc"): 0.50},
            {"piqa": 0.8, "boolq": 0.6},
        )
        + rows(
            "streamline",
            "ffn",
            0.25,
            {("piqa", "acc"): 0.60, ("piqa", "acc_norm"): 0.62, ("boolq", "acc"): 0.48},
            {"piqa": 0.9, "boolq": 0.7},
        )
    )
    return pd.DataFrame(data).reindex(columns=COLUMNS)


def test_main_table_by_hand(table):
    main = main_table(table).set_index(["method", "healing"])
    # piqa uses acc_norm (reported), boolq acc: dense Avg = (72 + 60) / 2 = 66
    assert main.loc[("dense", "none"), "Avg"] == pytest.approx(66.0)
    assert main.loc[("dense", "none"), "RA"] == pytest.approx(100.0)
    # ffn: (62 + 48) / 2 = 55 -> RA = 55 / 66 = 83.33
    assert main.loc[("streamline", "ffn"), "Avg"] == pytest.approx(55.0)
    assert main.loc[("streamline", "ffn"), "RA"] == pytest.approx(100 * 55 / 66)
    assert main.loc[("streamline", "none"), "RA"] == pytest.approx(100 * 51 / 66)


def test_markdown_bolds_best_compressed_value(table):
    text = to_markdown(main_table(table), "t")
    ffn = next(line for line in text.splitlines() if "| ffn |" in line)
    none = next(line for line in text.splitlines() if "| streamline | none |" in line)
    assert "**62.0**" in ffn and "**50.0**" in none  # piqa best: ffn; boolq best: none
    dense = next(line for line in text.splitlines() if "| dense |" in line)
    assert "**" not in dense
    assert r"\textbf{62.0}" in to_latex(main_table(table))


def test_stability_table(table):
    variant = {"model": "m", "method": "streamline", "healing": "ffn", "target_sparsity": 0.25}
    extra = [
        {**variant, "task": "piqa", "metric": "prediction_agreement", "value": 0.85},
        {**variant, "task": "piqa", "metric": "stability_ess", "value": 41.6},
        {**variant, "task": "piqa", "metric": "acc_ppl", "value": 0.61},
        {**variant, "task": "wikitext2", "metric": "stability_ess", "value": 1.0},  # no stability: not a row
    ]
    full = pd.concat([table, pd.DataFrame(extra).reindex(columns=COLUMNS)], ignore_index=True)
    full.loc[full["metric"] == "stability", "n_examples"] = 50
    stab = stability_table(full).set_index(["healing", "task"])
    assert stab.loc[("ffn", "piqa"), "stability (%)"] == pytest.approx(90.0)
    assert stab.loc[("ffn", "piqa"), "agreement (%)"] == pytest.approx(85.0)
    assert stab.loc[("ffn", "piqa"), "ESS"] == pytest.approx(41.6)
    assert stab.loc[("ffn", "piqa"), "acc_ppl (%)"] == pytest.approx(61.0)
    assert stab.loc[("ffn", "piqa"), "n"] == 50
    assert stab.loc[("none", "boolq"), "stability (%)"] == pytest.approx(60.0)
    assert set(stab.index.get_level_values("task")) == {"piqa", "boolq"}
    assert "dense" not in set(stability_table(full)["method"])
    text = stability_markdown(stability_table(full), "t")
    assert "| m | streamline | ffn | 0.25 | piqa | 90.0 | 85.0 | 42 | 50 | 61.0 |" in text


def test_layer_count_targets_group_and_sort_by_target(table):
    """l{n} rows (target_sparsity empty, target_layers n) keep their own group, after the sparsity rows."""
    extra = pd.DataFrame(
        rows("streamline", "none", None, {("piqa", "acc_norm"): 0.40, ("boolq", "acc"): 0.55})
        + rows("shortgpt", "none", None, {("piqa", "acc_norm"): 0.45, ("boolq", "acc"): 0.50})
    ).assign(target_layers=2, actual_sparsity=0.3)
    full = pd.concat([table.assign(actual_sparsity=table["target_sparsity"]), extra]).reindex(columns=COLUMNS)
    main = main_table(full)
    assert [(m, t) for m, t in zip(main["method"], main["target_layers"])] == [
        ("dense", 0), ("streamline", 0), ("streamline", 0), ("shortgpt", 2), ("streamline", 2)
    ]
    assert main.set_index(["method", "target_layers"]).loc[("shortgpt", 2), "Avg"] == pytest.approx(47.5)
    text = to_markdown(main, "t")
    # best per target (columns boolq, piqa): at l2 streamline has the best boolq (55.0), shortgpt the best piqa (45.0)
    assert "| m | shortgpt | none | l2 | 50.0 | **45.0** |" in text
    assert "| m | streamline | none | l2 | **55.0** | 40.0 |" in text


def test_plots_place_layer_targets_at_their_achieved_sparsity(table):
    from streamline.reporting.plots import _with_x

    extra = pd.DataFrame(rows("streamline", "none", None, {("piqa", "acc_norm"): 0.4})).assign(
        target_layers=2, actual_sparsity=0.3125
    )
    full = pd.concat([table.assign(actual_sparsity=table["target_sparsity"]), extra]).reindex(columns=COLUMNS)
    frame = _with_x(main_table(full), full).set_index(["method", "healing", "target_layers"])
    assert frame.loc[("streamline", "none", 2), "x"] == pytest.approx(0.3125)
    assert frame.loc[("streamline", "ffn", 0), "x"] == pytest.approx(0.25)
    assert frame.loc[("dense", "none", 0), "x"] == 0
