# The paper's tables and figures (Chen et al., ICLR 2025), one job per item of the registry
# streamline/reporting/paper.py ITEMS (name, kind, function, caption): tables and figures from this experiment's
# all.csv and paired.csv, per-model figures from the importance table and the plans. `snakemake paper` builds all;
# each builds alone by its file (README "Regenerating the paper"). An item whose rows all.csv lacks is still
# written and names the missing rows and the config key that adds them.
rule paper:
    input:
        paper_targets(),


rule paper_table:
    input:
        all_csv=f"{EXPERIMENT_DIR}/tables/all.csv",
        paired_csv=f"{EXPERIMENT_DIR}/tables/paired.csv",
    output:
        md=report(f"{PAPER_DIR}/{{item}}.md", caption="../report/paper_item.rst", category="Paper"),
        tex=f"{PAPER_DIR}/{{item}}.tex",
    wildcard_constraints:
        item="|".join(PAPER_TABLES),
    params:
        dpi=config["plots"]["dpi"],  # unused by tables; one script serves every item
        caption=lambda wc: paper_items.get(wc.item).caption,
    log:
        f"logs/experiments/{EXPERIMENT}/paper/{{item}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_item.py"


rule paper_figure:
    input:
        all_csv=f"{EXPERIMENT_DIR}/tables/all.csv",
        paired_csv=f"{EXPERIMENT_DIR}/tables/paired.csv",
    output:
        png=report(f"{PAPER_DIR}/{{item}}.png", caption="../report/paper_item.rst", category="Paper"),
        pdf=f"{PAPER_DIR}/{{item}}.pdf",
    wildcard_constraints:
        item="|".join(PAPER_FIGURES),
    params:
        dpi=lambda wc: figure_dpi(wc.item),
        caption=lambda wc: paper_items.get(wc.item).caption,
    log:
        f"logs/experiments/{EXPERIMENT}/paper/{{item}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_item.py"


rule paper_model_figure:
    input:
        # the same inputs as plot_importance: the cosine importance table and this experiment's plans of the model
        scores_csv=rules.plot_importance.input.scores,
        plans=rules.plot_importance.input.plans,
    output:
        png=report(
            f"{PAPER_DIR}/{{item}}_{{model}}.png",
            caption="../report/paper_item.rst",
            category="Paper",
            subcategory="{model}",
        ),
        pdf=f"{PAPER_DIR}/{{item}}_{{model}}.pdf",
    wildcard_constraints:
        item="|".join(PAPER_MODEL_FIGURES),
    params:
        dpi=lambda wc: figure_dpi(wc.item),
        caption=lambda wc: paper_items.get(wc.item).caption,
    log:
        f"logs/experiments/{EXPERIMENT}/paper/{{item}}_{{model}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/paper_item.py"
