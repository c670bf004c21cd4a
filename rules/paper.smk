# The paper's tables and figures (Chen et al., ICLR 2025), one rule and one script per item, built from this
# experiment's all.csv (the importance figure from the importance table and the plans). `snakemake paper` builds
# all of them; each builds alone by its file (README "Regenerating the paper"). An item whose rows all.csv lacks
# is still written and names the missing rows and the config key that adds them (streamline/reporting/paper.py).
rule paper:
    input:
        paper_targets(),


rule paper_main_table:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        md=report(f"{PAPER_DIR}/main_table.md", caption="../report/paper_main_table.rst", category="Paper"),
        tex=f"{PAPER_DIR}/main_table.tex",
    log:
        f"logs/experiments/{EXPERIMENT}/paper/main_table.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_main_table.py"


rule paper_lightweight_ablation:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        md=report(f"{PAPER_DIR}/lightweight_ablation.md", caption="../report/paper_lightweight_ablation.rst", category="Paper"),
        tex=f"{PAPER_DIR}/lightweight_ablation.tex",
    log:
        f"logs/experiments/{EXPERIMENT}/paper/lightweight_ablation.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_lightweight_ablation.py"


rule paper_stability_table:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        md=report(f"{PAPER_DIR}/stability_table.md", caption="../report/paper_stability_table.rst", category="Paper"),
        tex=f"{PAPER_DIR}/stability_table.tex",
    log:
        f"logs/experiments/{EXPERIMENT}/paper/stability_table.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_stability_table.py"


rule paper_pruning_metric:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        md=report(f"{PAPER_DIR}/pruning_metric.md", caption="../report/paper_pruning_metric.rst", category="Paper"),
        tex=f"{PAPER_DIR}/pruning_metric.tex",
    log:
        f"logs/experiments/{EXPERIMENT}/paper/pruning_metric.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_pruning_metric.py"


rule paper_sparsity_curves:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(f"{PAPER_DIR}/sparsity_curves.png", caption="../report/paper_sparsity_curves.rst", category="Paper"),
        pdf=f"{PAPER_DIR}/sparsity_curves.pdf",
    params:
        dpi=figure_dpi("sparsity_curves"),
    log:
        f"logs/experiments/{EXPERIMENT}/paper/sparsity_curves.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_sparsity_curves.py"


rule paper_training_data_size:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(f"{PAPER_DIR}/training_data_size.png", caption="../report/paper_training_data_size.rst", category="Paper"),
        pdf=f"{PAPER_DIR}/training_data_size.pdf",
    params:
        dpi=figure_dpi("training_data_size"),
    log:
        f"logs/experiments/{EXPERIMENT}/paper/training_data_size.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_training_data_size.py"


rule paper_healing_cost:
    input:
        table=f"{EXPERIMENT_DIR}/tables/all.csv",
    output:
        png=report(f"{PAPER_DIR}/healing_cost.png", caption="../report/paper_healing_cost.rst", category="Paper"),
        pdf=f"{PAPER_DIR}/healing_cost.pdf",
    params:
        dpi=figure_dpi("healing_cost"),
    log:
        f"logs/experiments/{EXPERIMENT}/paper/healing_cost.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_healing_cost.py"


rule paper_importance:
    input:
        # the same inputs as plot_importance: the cosine importance table and this experiment's plans of the model
        scores=rules.plot_importance.input.scores,
        plans=rules.plot_importance.input.plans,
    output:
        png=report(f"{PAPER_DIR}/importance_{{model}}.png", caption="../report/paper_importance.rst", category="Paper"),
        pdf=f"{PAPER_DIR}/importance_{{model}}.pdf",
    params:
        dpi=figure_dpi("importance"),
    log:
        f"logs/experiments/{EXPERIMENT}/paper/importance_{{model}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_importance.py"
