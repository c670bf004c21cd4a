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


rule plot_accuracy:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(
            f"{EXPERIMENT_DIR}/plots/{{kind}}_vs_sparsity.png",
            caption="../report/accuracy.rst",
            category="Plots",
        ),
        pdf=f"{EXPERIMENT_DIR}/plots/{{kind}}_vs_sparsity.pdf",
    wildcard_constraints:
        kind="accuracy|relative_accuracy",
    params:
        dpi=config["plots"]["dpi"],
    log:
        f"logs/experiments/{EXPERIMENT}/plots/{{kind}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_accuracy.py"


rule plot_stability:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(
            f"{EXPERIMENT_DIR}/plots/stability_vs_sparsity.png",
            caption="../report/stability.rst",
            category="Plots",
        ),
        pdf=f"{EXPERIMENT_DIR}/plots/stability_vs_sparsity.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        f"logs/experiments/{EXPERIMENT}/plots/stability.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_stability.py"


rule plot_perplexity:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(
            f"{EXPERIMENT_DIR}/plots/perplexity_vs_sparsity.png",
            caption="../report/perplexity.rst",
            category="Plots",
        ),
        pdf=f"{EXPERIMENT_DIR}/plots/perplexity_vs_sparsity.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        f"logs/experiments/{EXPERIMENT}/plots/perplexity.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_perplexity.py"


rule plot_healing_cost:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(f"{EXPERIMENT_DIR}/plots/healing_cost.png", caption="../report/healing_cost.rst", category="Plots"),
        pdf=f"{EXPERIMENT_DIR}/plots/healing_cost.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        f"logs/experiments/{EXPERIMENT}/plots/healing_cost.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_healing_cost.py"


rule plot_importance:
    input:
        scores=lambda wc: f"{importance_dir(wc.model)}/cosine.csv",
        plans=plans_of_model,
    output:
        png=report(
            f"{EXPERIMENT_DIR}/plots/importance_{{model}}.png",
            caption="../report/importance_windows.rst",
            category="Plots",
        ),
        pdf=f"{EXPERIMENT_DIR}/plots/importance_{{model}}.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        f"logs/experiments/{EXPERIMENT}/plots/importance_{{model}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_importance.py"
