# Pruning plan: target sparsity or layer count -> the layers each method removes (search methods run select_layers).


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
        settings=criterion_settings("select_layers"),  # the criterion's own section (laco: `laco`)
        plugins=plugins_of("method"),
        targets=search_targets(),
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/select_layers/{method}.tsv"
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
        plan="results/compressed/{model}/{method}-{healing}/{target}/plan.json",
    params:
        target=lambda wc: target_of(wc.target),
        sparsity_of=config["sparsity_of"],
        settings=criterion_settings("prune"),  # only what the criterion registered (random: search.seed)
        plugins=plugins_of("method", "healing"),
    log:
        "logs/prune/{model}/{method}-{healing}/{target}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prune.py"
