# Pruning plan: target sparsity or layer count -> the layers each method removes (search methods run select_layers).
# A search method's order: results/importance/{model}/{key}/{method}_order.json, key = settings_key(select_settings);
# a plan: results/compressed/{model}/{method}-{healing}/{target}/{key}/, key = the variant key (rules/common.smk).


rule select_layers:
    input:
        manifest="results/models/{model}/manifest.json",
        text=calibration_files,  # the search windows are cut from the calibration text
    output:
        order="results/importance/{model}/{key}/{method}_order.json",
        provenance="results/importance/{model}/{key}/{method}_provenance.json",
    wildcard_constraints:
        method="|".join(SEARCH_METHODS),
    params:
        key_settings=lambda wc: keyed(wc.key, select_settings(wc.method), f"select_layers[{wc.model}/{wc.method}]"),
        search=lambda wc: select_settings(wc.method)["search"],
        calibration_dataset=lambda wc: select_settings(wc.method)["calibration_dataset"],
        settings=lambda wc: select_settings(wc.method)["settings"],  # the criterion's own section (laco: `laco`)
        plugins=lambda wc: select_settings(wc.method)["plugins"],
        targets=lambda wc: select_settings(wc.method)["targets"],
        run=lambda wc: select_settings(wc.method)["run"],
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/select_layers/{method}-{key}.tsv"
    log:
        "logs/importance/{model}/{key}/{method}_order.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/select_layers.py"


rule prune:
    input:
        scores=variant_scores,
        manifest="results/models/{model}/manifest.json",
    output:
        plan="results/compressed/{model}/{method}-{healing}/{target}/{key}/plan.json",
    params:
        key_settings=lambda wc: variant_of(wc)["settings"],  # everything the key hashes: written as settings.json
        target=variant_param("prune", "target"),
        sparsity_of=variant_param("prune", "sparsity_of"),
        settings=variant_param("prune", "settings"),  # only what the criterion registered (random: search.seed)
        plugins=variant_param("prune", "plugins"),
    log:
        "logs/prune/{model}/{method}-{healing}/{target}/{key}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prune.py"
