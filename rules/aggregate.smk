# Everything into one tidy table.


rule aggregate:
    input:
        plans=expand(
            "results/compressed/{model}/{variant}/compressed.json", model=MODELS, variant=compressed_variants()
        ),
        manifests=expand("results/models/{model}/manifest.json", model=MODELS),
        importance=expand(
            "results/importance/{model}/{metric}.csv", model=MODELS, metric=config["importance"]["metrics"]
        ),
        accuracy=eval_outputs("accuracy.json"),
        ppl=eval_outputs("ppl.json"),
        stats=eval_outputs("model_stats.json"),
        stability=eval_outputs("stability.json"),
    output:
        table="results/tables/all.csv",
        provenance="results/tables/provenance.json",
    params:
        config_hash=results_config_hash(),
        seed=config["calibration"]["seed"],
    log:
        "logs/aggregate.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/aggregate.py"


rule tables:
    input:
        table="results/tables/all.csv",
    output:
        main=report("results/tables/main.md", caption="../report/main_table.rst", category="Tables"),
        main_tex="results/tables/main.tex",
        stability=report("results/tables/stability.md", caption="../report/stability_table.rst", category="Tables"),
    log:
        "logs/tables.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/tables.py"


rule plot_accuracy:
    input:
        table="results/tables/all.csv",
    output:
        png=report("results/plots/{kind}_vs_sparsity.png", caption="../report/accuracy.rst", category="Plots"),
        pdf="results/plots/{kind}_vs_sparsity.pdf",
    wildcard_constraints:
        kind="accuracy|relative_accuracy",
    params:
        dpi=config["plots"]["dpi"],
    log:
        "logs/plots/{kind}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_accuracy.py"


rule plot_stability:
    input:
        table="results/tables/all.csv",
    output:
        png=report("results/plots/stability_vs_sparsity.png", caption="../report/stability.rst", category="Plots"),
        pdf="results/plots/stability_vs_sparsity.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        "logs/plots/stability.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_stability.py"


rule plot_perplexity:
    input:
        table="results/tables/all.csv",
    output:
        png=report("results/plots/perplexity_vs_sparsity.png", caption="../report/perplexity.rst", category="Plots"),
        pdf="results/plots/perplexity_vs_sparsity.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        "logs/plots/perplexity.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_perplexity.py"


rule plot_healing_cost:
    input:
        table="results/tables/all.csv",
    output:
        png=report("results/plots/healing_cost.png", caption="../report/healing_cost.rst", category="Plots"),
        pdf="results/plots/healing_cost.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        "logs/plots/healing_cost.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_healing_cost.py"


rule plot_importance:
    input:
        scores="results/importance/{model}/cosine.csv",
        plans=plans_of_model,
    output:
        png=report("results/plots/importance_{model}.png", caption="../report/importance_windows.rst", category="Plots"),
        pdf="results/plots/importance_{model}.pdf",
    params:
        dpi=config["plots"]["dpi"],
    log:
        "logs/plots/importance_{model}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/plot_importance.py"
