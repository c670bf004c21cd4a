import pandas as pd
import pytest

from streamline.report import COLUMNS
from streamline.tables import main_table, stability_table, to_latex, to_markdown


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
    stab = stability_table(table).set_index("healing")
    assert stab.loc["ffn", "piqa"] == pytest.approx(90.0) and stab.loc["ffn", "Avg"] == pytest.approx(80.0)
    assert "dense" not in set(stability_table(table)["method"])
