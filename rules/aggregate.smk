# Everything into one tidy table, then the experiment's tables and plots: results/experiments/{experiment}/.


rule aggregate:
    input:
        plans=expand(
            "results/compressed/{model}/{variant}/compressed.json", model=MODELS, variant=compressed_variants()
        ),
        manifests=expand("results/models/{model}/manifest.json", model=MODELS),
        importance=[f"{importance_dir(m)}/{metric}.csv" for m in MODELS for metric in config["importance"]["metrics"]],
        accuracy=eval_outputs("accuracy", "accuracy.json"),
        ppl=eval_outputs("perplexity", "ppl.json"),
        stats=eval_outputs("model_stats", "model_stats.json"),
        stability=eval_outputs("stability", "stability.json"),
    output:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
        provenance=f"{EXPERIMENT_DIR}/tables/provenance.json",
    params:
        entries=aggregate_entries(),  # exactly this config's variants: files, key and training scale of each
        experiment=EXPERIMENT,
        config_hash=results_config_hash(),
        seed=config["calibration"]["seed"],
    log:
        f"logs/experiments/{EXPERIMENT}/aggregate.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/aggregate.py"


# Paired bootstrap intervals of every compared number (streamline/reporting/paired.py): the per-example records.
rule paired:
    input:
        samples=eval_outputs("accuracy", "samples"),
        ppl=eval_outputs("perplexity", "ppl.json"),
    output:
        paired=f"{EXPERIMENT_DIR}/tables/paired.csv",
    params:
        entries=aggregate_entries(),
        intervals=config["intervals"],
        correctness=config["evaluation"]["stability_correctness"],
    log:
        f"logs/experiments/{EXPERIMENT}/paired.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paired.py"


# The users' command `snakemake --cores 8 results/tables/all.csv`: results/tables/ holds a copy of the tables of
# the experiment the config names. Switching configs re-runs only this copy (its input files change); the
# experiment folders and every keyed result stay as they are (README, "Where results go").
rule current_tables:
    input:
        expand(f"{EXPERIMENT_DIR}/tables/{{name}}", name=TABLE_FILES),
    output:
        expand(f"{CURRENT_TABLES_DIR}/{{name}}", name=TABLE_FILES),
    params:
        experiment=EXPERIMENT,
    log:
        f"logs/experiments/{EXPERIMENT}/current_tables.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/current_tables.py"


rule tables:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
        paired=f"{EXPERIMENT_DIR}/tables/paired.csv",
    output:
        main=report(f"{EXPERIMENT_DIR}/tables/main.md", caption="../report/main_table.rst", category="Tables"),
        main_tex=f"{EXPERIMENT_DIR}/tables/main.tex",
        stability=report(
            f"{EXPERIMENT_DIR}/tables/stability.md",
            caption="../report/stability_table.rst",
            category="Tables",
        ),
    log:
        f"logs/experiments/{EXPERIMENT}/tables.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/tables.py"


# The experiment's figures, one job each (streamline/reporting/plots.py FIGURES: name, drawing, caption).
rule plot:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
        paired=f"{EXPERIMENT_DIR}/tables/paired.csv",
    output:
        png=report(f"{EXPERIMENT_DIR}/plots/{{plot}}.png", caption="../report/figure.rst", category="Plots"),
        pdf=f"{EXPERIMENT_DIR}/plots/{{plot}}.pdf",
    wildcard_constraints:
        plot="|".join(PLOT_NAMES),
    params:
        dpi=config["plots"]["dpi"],
        caption=lambda wc: FIGURES[wc.plot].caption,
    log:
        f"logs/experiments/{EXPERIMENT}/plots/{{plot}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot.py"


rule plot_importance:
    input:
        scores=lambda wc: f"{importance_dir(wc.model)}/cosine.csv",
        plans=plans_of_model,
    output:
        png=report(
            f"{EXPERIMENT_DIR}/plots/importance_{{model}}.png",
            caption="../report/figure.rst",
            category="Plots",
        ),
        pdf=f"{EXPERIMENT_DIR}/plots/importance_{{model}}.pdf",
    params:
        dpi=config["plots"]["dpi"],
        caption="Cosine layer-importance heatmap with the windows removed by the pruning plans marked.",
    log:
        f"logs/experiments/{EXPERIMENT}/plots/importance_{{model}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_importance.py"
