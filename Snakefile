# llm-streamline: layer pruning of causal LMs (LLM-Streamline, Chen et al., ICLR 2025) as a Snakemake DAG.
#   snakemake --cores 8 results/tables/all.csv   (the config's experiment's tables, copied to results/tables/)
#   snakemake --cores 2                          (the same, and every plot)
from snakemake.utils import min_version

min_version("9.19")


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model="[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*",
    method=METHOD_RE,
    healing=HEALING_RE,
    target=TARGET_RE,
    metric=METRIC_RE,
    variant=f"dense|({METHOD_RE})-({HEALING_RE})/({TARGET_RE})/{KEY_RE}",
    key=KEY_RE,


include: "rules/models.smk"
include: "rules/importance.smk"
include: "rules/prune.smk"
include: "rules/replace.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"
include: "rules/paper.smk"


# Light rules run where Snakemake runs (on a cluster: the login node), not as cluster jobs.
localrules:
    all,
    importance,
    prune,
    stability,
    aggregate,
    paired,
    current_tables,
    tables,
    plot,
    plot_importance,
    paper,
    paper_table,
    paper_figure,
    paper_model_figure,


rule all:
    input:
        report_targets(),
    default_target: True
