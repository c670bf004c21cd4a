# Pruning plan: target sparsity -> window length n -> the most redundant window.


rule prune:
    input:
        scores=importance_csv,
        manifest="results/models/{model}/manifest.json",
    output:
        plan="results/compressed/{model}/{method}-{replacement}/s{sparsity}/plan.json",
    params:
        sparsity=lambda wc: float(wc.sparsity),
    log:
        "logs/prune/{model}/{method}-{replacement}/s{sparsity}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prune.py"
