"""The workflow steps that load no model: importance tables, plans, stability, all.csv, paired intervals, tables,
figures and paper items. Paths and plain settings in, files out, as in steps.py (the model steps).

They import no torch, transformers or healing stack (tests/test_import_cost.py checks), so each of these jobs
starts in well under a second instead of the seconds a model job's imports take; the reporting modules are
imported by the steps that draw or write with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from streamline.atomic import read_json, write_json
from streamline.importance import windows
from streamline.numerics import require_finite
from streamline.pruning import criteria
from streamline.pruning import plans as prune


def importance_step(
    *, pairs_path: str | Path, metric: str, csv_path: str | Path, png_path: str | Path, title: str
) -> pd.DataFrame:
    """The window table of `metric` from the pair similarities (float64, read as numpy: no torch), its CSV and
    heatmap."""
    if metric not in windows.METRICS:
        raise ValueError(f"importance metric {metric!r} is unknown; allowed: {', '.join(windows.METRICS)}")
    pair_mean = load_file(str(pairs_path))[metric].astype(np.float64)  # (L+1, L+1)
    table = windows.window_table(pair_mean, metric)
    scores = {f"the window of {r.num_layers} from layer {r.start_layer}": r.score for r in table.itertuples()}
    require_finite(f"the {metric} importance table", scores, f"rebuild {str(pairs_path)!r}: snakemake --forcerun it")
    windows.write_table(table, csv_path)
    windows.plot_heatmap(table, png_path, title)
    return table


def prune_step(
    *,
    scores: str | Path | None,
    manifest_path: str | Path,
    sparsity: float | None,
    layers: int | None,
    healing: str,
    method: str,
    settings: dict[str, Any],
    sparsity_of: str,
    plan_path: str | Path,
) -> dict[str, Any]:
    """The plan of criterion `method` at `sparsity` or removing exactly `layers` layers (give one).

    `scores`: the importance table the criterion reads (None if it reads none), or a search criterion's order
    (select_step's output). `settings`: the config keys the criterion registered (criteria.settings_of).
    """
    if (sparsity is None) == (layers is None):
        raise ValueError(f"a plan needs exactly one target: sparsity={sparsity}, prune_layers={layers}")
    criterion = criteria.get(method)
    manifest = read_json(manifest_path)
    num_layers = len(manifest["layer_params"])
    merges = None
    if criterion.kind == "search":
        selection = criteria.check_search_record(criterion, read_json(scores), num_layers)
        if criterion.window:  # ppl-window: a window table found by forward passes
            result = pd.DataFrame(selection["windows"])
        else:
            result, merges = selection["order"], selection.get("merges")
    else:
        if criterion.metric is not None and scores is None:
            raise ValueError(f"method {method!r} reads the {criterion.metric!r} importance table; none was given")
        table = pd.read_csv(scores) if criterion.metric is not None else None
        result = criterion.layers(table, num_layers, criteria.check_settings(criterion, settings))
        result = criteria.check_result(criterion, result, num_layers)  # a plugin's too: type, range, repeats
    if criterion.window:
        if layers is None:
            plan = prune.plan_pruning(result, manifest, sparsity, healing, sparsity_of)
        else:
            plan = prune.plan_layers(result, manifest, layers, healing, sparsity_of)
    elif layers is None:
        plan = prune.plan_from_order(result, manifest, sparsity, healing, sparsity_of, merges)
    else:
        plan = prune.plan_order_layers(result, manifest, layers, healing, sparsity_of, merges)
    plan["method"] = method
    prune.check_plan(plan, manifest)  # every count it claims is the arithmetic of its layers (all.csv reads them)
    write_json(plan_path, plan)
    return plan


def stability_step(
    *, dense_samples: str | Path, variant_samples: str | Path, out_path: str | Path, correctness: str
) -> dict[str, Any]:
    """Stability per multiple-choice task; tasks without per-choice scores (e.g. lambada) are skipped.
    `correctness` (config evaluation.stability_correctness): `acc_ppl` (the paper) or `acc` decides right/wrong."""
    from streamline.evaluation.stability import stability

    result = {}
    for dense_file in sorted(Path(dense_samples).glob("*.choices.json")):
        task = dense_file.name.removesuffix(".choices.json")
        variant_file = Path(variant_samples) / dense_file.name
        if not variant_file.is_file():
            raise FileNotFoundError(f"task {task!r} has no per-example log for the compressed model ({variant_file})")
        result[task] = stability(json.loads(dense_file.read_text()), json.loads(variant_file.read_text()), correctness)
    write_json(out_path, result)
    return result


def aggregate_step(
    *,
    entries: list[dict[str, Any]],
    manifests: list[str],
    table_path: str | Path,
    config_hash: str,
    seed: int,
    experiment: str,
) -> pd.DataFrame:
    """The experiment's all.csv from each of its variants' files (report.build_all_table)."""
    from streamline.reporting.collect import build_all_table

    return build_all_table(entries, manifests, table_path, config_hash, seed, experiment)


def paired_step(
    *, entries: list[dict[str, Any]], intervals: dict[str, Any], correctness: str, out_path: str | Path
) -> pd.DataFrame:
    """The experiment's paired.csv: bootstrap intervals of every variant's numbers and of its differences from the
    dense model, from plain removal and from the runner-up (reporting/paired.py). `intervals`: config `intervals`."""
    from streamline.reporting.paired import Bootstrap, write_paired

    return write_paired(entries, out_path, Bootstrap(**intervals), correctness)


def tables_step(
    *,
    all_csv: str | Path,
    paired_csv: str | Path | None,
    main_md: str | Path,
    main_tex: str | Path,
    stability_md: str | Path,
) -> None:
    """The experiment's summary tables from all.csv and paired.csv (reporting/tables.py)."""
    from streamline.reporting.tables import write_tables

    write_tables(all_csv, paired_csv, main_md, main_tex, stability_md)


def plot_step(
    *, figure: str, all_csv: str | Path, paired_csv: str | Path | None, png: str | Path, pdf: str | Path, dpi: int
) -> None:
    """One of the experiment's figures (reporting/plots.py FIGURES) from all.csv and paired.csv."""
    from streamline.reporting.frame import read_frame
    from streamline.reporting.plots import FIGURES, save

    if figure not in FIGURES:
        raise ValueError(f"figure {figure!r} is unknown; allowed: {', '.join(FIGURES)}")
    frame, _ = read_frame(all_csv, paired_csv)
    save(FIGURES[figure].draw(frame), png, pdf, dpi)


def importance_plot_step(
    *, scores_csv: str | Path, plans: list[str], png: str | Path, pdf: str | Path, model: str, dpi: int
) -> None:
    """The importance heatmap of `model` with each window plan's removed window marked."""
    from streamline.reporting.plots import importance_figure, save

    save(importance_figure(scores_csv, plans, model), png, pdf, dpi)


def paper_step(*, item: str, outputs: list[str], inputs: dict[str, Any], model: str, dpi: int) -> None:
    """One paper item (reporting/paper.py ITEMS) into its two files; `inputs`: all_csv and paired_csv, or for a
    per-model figure scores_csv and plans."""
    from streamline.reporting.paper import write_item

    write_item(item, outputs, model=model, dpi=dpi, **inputs)
