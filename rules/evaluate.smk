# Evaluation of the dense model and every compressed variant: accuracy, perplexity, stability, size/speed.
# Each step's folder: results/eval/{model}/{variant}/{step}-{key}/, key = settings_key(eval_settings(step)).


rule accuracy:
    input:
        checkpoint=checkpoint_marker,
        tasks=task_files,
    output:
        accuracy="results/eval/{model}/{variant}/accuracy-{key}/accuracy.json",
        samples=directory("results/eval/{model}/{variant}/accuracy-{key}/samples"),
        provenance="results/eval/{model}/{variant}/accuracy-{key}/provenance.json",
    params:
        key_settings=eval_params("accuracy"),  # stability_correctness only reaches rule stability
        evaluation=eval_settings("accuracy")["evaluation"],
        run=eval_settings("accuracy")["run"],
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/accuracy/{variant}/{key}.tsv"
    log:
        "logs/eval/{model}/{variant}/accuracy-{key}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/accuracy.py"


rule perplexity:
    input:
        checkpoint=checkpoint_marker,
        text=perplexity_files,
    output:
        ppl="results/eval/{model}/{variant}/perplexity-{key}/ppl.json",
    params:
        key_settings=eval_params("perplexity"),
        perplexity=eval_settings("perplexity")["perplexity"],
        run=eval_settings("perplexity")["run"],
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/perplexity/{variant}/{key}.tsv"
    log:
        "logs/eval/{model}/{variant}/perplexity-{key}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/perplexity.py"


rule model_stats:
    input:
        checkpoint=checkpoint_marker,
    output:
        stats="results/eval/{model}/{variant}/model_stats-{key}/model_stats.json",
    params:
        key_settings=eval_params("model_stats"),
        speed=eval_settings("model_stats")["speed"],
        run=eval_settings("model_stats")["run"],
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/model_stats/{variant}/{key}.tsv"
    log:
        "logs/eval/{model}/{variant}/model_stats-{key}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/model_stats.py"


rule stability:
    input:
        dense=lambda wc: f"{eval_dir(wc.model, 'dense', 'accuracy')}/samples",
        variant=lambda wc: f"{eval_dir(wc.model, wc.variant, 'accuracy')}/samples",
    output:
        stability="results/eval/{model}/{variant}/stability-{key}/stability.json",
    params:
        key_settings=eval_params("stability"),
        correctness=eval_settings("stability")["correctness"],
    log:
        "logs/eval/{model}/{variant}/stability-{key}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/stability.py"
