"""The reporting layer's tables (issue 22 item 1, issue 23 item 1): the variant frame by hand, one accuracy
preference, intervals and marks from paired.csv, one bolding rule that never bolds a tie."""

import numpy as np
import pandas as pd
import pytest

from streamline.reporting import render
from streamline.reporting.collect import COLUMNS
from streamline.reporting.frame import variant_frame
from streamline.reporting.render import Column
from streamline.reporting.tables import main_table, stability_table, task_frame


def rows(method, healing, sparsity, values, stability=None, variant=None):
    """Tidy all.csv rows for one variant: {(task, metric): value} plus per-task stability."""
    entries = list(values.items()) + [((task, "stability"), value) for task, value in (stability or {}).items()]
    name = variant or ("dense" if method == "dense" else f"{method}-{healing}/s{sparsity}/k")
    base = {"model": "m", "method": method, "healing": healing, "target_sparsity": sparsity, "variant": name}
    return [{**base, "task": task, "metric": metric, "value": value} for (task, metric), value in entries]


@pytest.fixture()
def table():
    data = (
        rows("dense", "none", 0.0, {("piqa", "acc"): 0.70, ("piqa", "acc_norm"): 0.72, ("boolq", "acc"): 0.60,
                                    ("wikitext2", "perplexity"): 20.0})
        + rows("streamline", "none", 0.25, {("piqa", "acc"): 0.50, ("piqa", "acc_norm"): 0.52, ("boolq", "acc"): 0.50},
               {"piqa": 0.8, "boolq": 0.6})
        + rows("streamline", "ffn", 0.25, {("piqa", "acc"): 0.60, ("piqa", "acc_norm"): 0.62, ("boolq", "acc"): 0.48},
               {"piqa": 0.9, "boolq": 0.7})
    )
    return pd.DataFrame(data).reindex(columns=COLUMNS)


def paired_rows(table_rows: list[tuple]) -> pd.DataFrame:
    """paired.csv rows from (variant, comparison, task, metric, value, low, high, difference, resolved)."""
    cols = ["variant", "comparison", "task", "metric", "value", "low", "high", "difference", "resolved"]
    frame = pd.DataFrame(table_rows, columns=cols).assign(model="m", reference="r", reference_value=np.nan, n=100)
    frame["resolved"] = frame["resolved"].astype("boolean")
    return frame


def test_variant_frame_by_hand(table):
    frame = variant_frame(table)[0].set_index(["method", "healing"])
    # acc_ppl absent: piqa uses acc_norm, boolq acc: dense Avg = (72 + 60) / 2 = 66
    assert frame.loc[("dense", "none"), "Avg"] == pytest.approx(66.0)
    assert frame.loc[("dense", "none"), "RA"] == pytest.approx(100.0)
    # ffn: (62 + 48) / 2 = 55 -> RA = 55 / 66 = 83.33; stability (90 + 70) / 2
    assert frame.loc[("streamline", "ffn"), "Avg"] == pytest.approx(55.0)
    assert frame.loc[("streamline", "ffn"), "RA"] == pytest.approx(100 * 55 / 66)
    assert frame.loc[("streamline", "ffn"), "stability"] == pytest.approx(80.0)
    assert frame.loc[("streamline", "none"), "RA"] == pytest.approx(100 * 51 / 66)


def test_acc_ppl_is_the_one_accuracy_preference(table):
    extra = pd.DataFrame(rows("streamline", "ffn", 0.25, {("piqa", "acc_ppl"): 0.40})).reindex(columns=COLUMNS)
    frame = variant_frame(pd.concat([table, extra]))[0].set_index(["method", "healing"])
    assert frame.loc[("streamline", "ffn"), "piqa"] == pytest.approx(40.0)  # acc_ppl before acc_norm
    assert frame.loc[("streamline", "ffn"), "acc_metric"] == "acc/acc_ppl"


def test_intervals_marks_and_bold_come_from_paired_csv(table):
    ffn, none = "streamline-ffn/s0.25/k", "streamline-none/s0.25/k"
    paired = paired_rows([
        (ffn, "value", "piqa", "acc_norm", 0.62, 0.57, 0.67, np.nan, pd.NA),
        (ffn, "removal", "piqa", "acc_norm", 0.62, 0.04, 0.16, 0.10, True),  # resolved better than removal
        (ffn, "runner_up", "piqa", "acc_norm", 0.62, 0.04, 0.16, 0.10, True),  # resolved best: bold
        (none, "runner_up", "boolq", "acc", 0.50, -0.03, 0.07, 0.02, False),  # a tie: never bold
        (ffn, "removal", "wikitext2", "perplexity", 30.0, 4.0, 9.0, 6.0, True),  # higher perplexity: worse
    ])
    with_ppl = pd.concat([table, pd.DataFrame(rows("streamline", "ffn", 0.25, {("wikitext2", "perplexity"): 30.0}))])
    frame, tasks = variant_frame(with_ppl.reindex(columns=COLUMNS), paired)
    columns = [Column(t, t) for t in tasks] + [Column("perplexity", "PPL")]
    text = render.markdown(frame, columns, "t", [render.interval_note(frame)])
    ffn_line = next(line for line in text.splitlines() if "| ffn |" in line)
    assert "| **62.0 ± 5.0 ↑** |" in ffn_line and "| 30.0 ↓ |" in ffn_line
    none_line = next(line for line in text.splitlines() if "| streamline | none |" in line)
    assert "**" not in none_line and "| 50.0 |" in none_line
    assert "↑/↓ = better/worse than plain removal" in text
    latex = render.latex(frame, columns, [])
    assert r"\textbf{62.0 $\pm$ 5.0 $\uparrow$}" in latex and r"30.0 $\downarrow$" in latex


def test_main_table_files(table, tmp_path):
    table.to_csv(tmp_path / "all.csv", index=False)
    out = main_table(tmp_path / "all.csv", None, tmp_path / "main.md", tmp_path / "main.tex")
    md = (tmp_path / "main.md").read_text()
    dense = next(line for line in md.splitlines() if "| dense |" in line)
    assert "| 100.0 |" in dense and "**" not in md  # RA of dense; no bold without paired intervals
    assert "no intervals: this table was made without paired.csv" in md
    assert list(out["method"]) == ["dense", "streamline", "streamline"]
    assert (tmp_path / "main.tex").read_text().startswith("% accuracy (%) per task: acc, acc_norm")


def test_stability_table(table, tmp_path):
    variant = {"model": "m", "method": "streamline", "healing": "ffn", "target_sparsity": 0.25,
               "variant": "streamline-ffn/s0.25/k"}
    extra = [
        {**variant, "task": "piqa", "metric": "prediction_agreement", "value": 0.85},
        {**variant, "task": "piqa", "metric": "stability_ess", "value": 41.6},
        {**variant, "task": "piqa", "metric": "acc_ppl", "value": 0.61},
        {**variant, "task": "piqa", "metric": "choice_kl", "value": 0.0123},
        {**variant, "task": "wikitext2", "metric": "stability_ess", "value": 1.0},  # no stability: not a row
    ]
    full = pd.concat([table, pd.DataFrame(extra).reindex(columns=COLUMNS)], ignore_index=True)
    full.loc[full["metric"] == "stability", "n_examples"] = 50
    stab = task_frame(full, None).set_index(["healing", "task"])
    assert stab.loc[("ffn", "piqa"), "stability"] == pytest.approx(90.0)
    assert stab.loc[("ffn", "piqa"), "prediction_agreement"] == pytest.approx(85.0)
    assert stab.loc[("ffn", "piqa"), "acc_ppl"] == pytest.approx(61.0)
    assert stab.loc[("ffn", "piqa"), "n_examples"] == 50
    assert stab.loc[("none", "boolq"), "stability"] == pytest.approx(60.0)
    assert set(stab.index.get_level_values("task")) == {"piqa", "boolq"}
    full.to_csv(tmp_path / "all.csv", index=False)
    stability_table(tmp_path / "all.csv", None, tmp_path / "s.md")
    assert "| m | streamline | ffn | 0.25 | piqa | 90.0 | 85.0 | 42 | 50 | 61.0 | 0.012 |" in (tmp_path / "s.md").read_text()


def test_layer_count_targets_group_sort_and_sit_at_their_achieved_sparsity(table):
    """l{n} rows (target_sparsity empty, target_layers n) keep their own group after the sparsity rows; figures
    place them at their achieved sparsity."""
    extra = pd.DataFrame(
        rows("streamline", "none", None, {("piqa", "acc_norm"): 0.40, ("boolq", "acc"): 0.55}, variant="a")
        + rows("shortgpt", "none", None, {("piqa", "acc_norm"): 0.45, ("boolq", "acc"): 0.50}, variant="b")
    ).assign(target_layers=2, actual_sparsity=0.3125)
    full = pd.concat([table.assign(actual_sparsity=table["target_sparsity"]), extra]).reindex(columns=COLUMNS)
    frame = variant_frame(full)[0]
    assert [(m, t) for m, t in zip(frame["method"], frame["target_layers"])] == [
        ("dense", 0), ("streamline", 0), ("streamline", 0), ("shortgpt", 2), ("streamline", 2)
    ]
    indexed = frame.set_index(["method", "healing", "target_layers"])
    assert indexed.loc[("shortgpt", "none", 2), "Avg"] == pytest.approx(47.5)
    assert indexed.loc[("streamline", "none", 2), "x"] == pytest.approx(0.3125)
    assert indexed.loc[("streamline", "ffn", 0), "x"] == pytest.approx(0.25)
    assert indexed.loc[("dense", "none", 0), "x"] == 0
    text = render.markdown(frame, [Column("Avg", "Avg")], "t", [])
    assert "| m | shortgpt | none | l2 | 47.5 |" in text and "| m | dense | none |  | 66.0 |" in text
