# Healing: replacement (cached hidden-state pairs, MSE), LoRA or LM-loss training; writes the compressed checkpoint.


rule replace:
    input:
        plan="results/compressed/{model}/{method}-{healing}/{target}/plan.json",
        manifest="results/models/{model}/manifest.json",
    output:
        marker="results/compressed/{model}/{method}-{healing}/{target}/compressed.json",
        curve="results/compressed/{model}/{method}-{healing}/{target}/train_log.csv",
        provenance="results/compressed/{model}/{method}-{healing}/{target}/provenance.json",
    params:
        training=healing_training,
        lora=healing_lora,
        plugins=plugins_of("healing"),
        run=run_settings(),
        # hidden-state pairs shared by replacements of the same window and data (streamline/pair_cache.py)
        pair_cache="results/cache/{model}/pairs",
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/replace/{method}-{healing}/{target}.tsv"
    log:
        "logs/replace/{model}/{method}-{healing}/{target}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/replace.py"
