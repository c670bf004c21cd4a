# Healing: replacement (cached hidden-state pairs, MSE), LoRA or LM-loss training; writes the compressed checkpoint.


rule replace:
    input:
        plan="results/compressed/{model}/{method}-{healing}/s{sparsity}/plan.json",
        manifest="results/models/{model}/manifest.json",
    output:
        marker="results/compressed/{model}/{method}-{healing}/s{sparsity}/compressed.json",
        curve="results/compressed/{model}/{method}-{healing}/s{sparsity}/train_log.csv",
        provenance="results/compressed/{model}/{method}-{healing}/s{sparsity}/provenance.json",
    params:
        training=healing_training,
        lora=healing_lora,
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    log:
        "logs/replace/{model}/{method}-{healing}/s{sparsity}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/replace.py"
