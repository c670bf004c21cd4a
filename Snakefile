# llm-streamline: layer pruning of causal LMs (LLM-Streamline, Chen et al., ICLR 2025) as a Snakemake DAG.
#   snakemake --cores 2 results/tables/all.csv
from snakemake.utils import min_version

min_version("9.19")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/importance.smk"
include: "rules/prune.smk"
include: "rules/replace.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        "results/tables/all.csv",
    default_target: True
