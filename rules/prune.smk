# Pruning plan: target sparsity -> the layers each method removes (search methods first run select_layers).


rule select_layers:
    input:
        manifest="results/models/{model}/manifest.json",
    output:
        order="results/importance/{model}/{method}_order.json",
        provenance="results/importance/{model}/{method}_provenance.json",
    wildcard_constraints:
        method="|".join(SEARCH_METHODS),
    params:
        search=config["search"],
        calibration_dataset=config["calibration"]["dataset"],
        laco=config["laco"],
        max_sparsity=max(config["sparsities"]),
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    log:
        "logs/importance/{model}/{method}_order.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/select_layers.py"


rule prune:
    input:
        scores=prune_scores,
        manifest="results/models/{model}/manifest.json",
    output:
        plan="results/compressed/{model}/{method}-{healing}/s{sparsity}/plan.json",
    params:
        sparsity=lambda wc: float(wc.sparsity),
        seed=config["search"]["seed"],
    log:
        "logs/prune/{model}/{method}-{healing}/s{sparsity}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prune.py"
