# Healing: replacement (cached hidden-state pairs, MSE), LoRA or LM-loss training; writes the compressed checkpoint.
# Same folder as the plan: results/compressed/{model}/{method}-{healing}/{target}/{key}/ (the variant key).


rule replace:
    input:
        plan="results/compressed/{model}/{method}-{healing}/{target}/{key}/plan.json",
        manifest="results/models/{model}/manifest.json",
        text=training_files,  # training.dataset, for a kind that trains: editing it re-runs the trained variants
    output:
        marker="results/compressed/{model}/{method}-{healing}/{target}/{key}/compressed.json",
        curve="results/compressed/{model}/{method}-{healing}/{target}/{key}/train_log.csv",
        provenance="results/compressed/{model}/{method}-{healing}/{target}/{key}/provenance.json",
    params:
        training=variant_param("replace", "training"),  # samples = training scale x training.samples
        lora=variant_param("replace", "lora"),
        plugins=variant_param("replace", "plugins"),
        run=variant_param("replace", "run"),
        # hidden-state pairs shared by replacements of the same window and data (streamline/healing/pair_cache.py)
        pair_cache="results/cache/{model}/pairs",
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/replace/{method}-{healing}/{target}/{key}.tsv"
    log:
        "logs/replace/{model}/{method}-{healing}/{target}/{key}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/replace.py"
