# Evaluation of the dense model and every compressed variant: accuracy, perplexity, stability, size/speed.


rule accuracy:
    input:
        checkpoint=checkpoint_marker,
        tasks=task_files,
    output:
        accuracy="results/eval/{model}/{variant}/accuracy.json",
        samples=directory("results/eval/{model}/{variant}/samples"),
        provenance="results/eval/{model}/{variant}/provenance.json",
    params:
        # stability_correctness only reaches rule stability: changing it re-runs no model
        evaluation={k: v for k, v in config["evaluation"].items() if k != "stability_correctness"},
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/accuracy/{variant}.tsv"
    log:
        "logs/eval/{model}/{variant}/accuracy.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/accuracy.py"


rule perplexity:
    input:
        checkpoint=checkpoint_marker,
    output:
        ppl="results/eval/{model}/{variant}/ppl.json",
    params:
        perplexity=config["perplexity"],
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/perplexity/{variant}.tsv"
    log:
        "logs/eval/{model}/{variant}/perplexity.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/perplexity.py"


rule model_stats:
    input:
        checkpoint=checkpoint_marker,
    output:
        stats="results/eval/{model}/{variant}/model_stats.json",
    params:
        speed=config["speed"],
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/model_stats/{variant}.tsv"
    log:
        "logs/eval/{model}/{variant}/model_stats.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/model_stats.py"


rule stability:
    input:
        dense="results/eval/{model}/dense/samples",
        variant="results/eval/{model}/{variant}/samples",
    output:
        stability="results/eval/{model}/{variant}/stability.json",
    params:
        correctness=config["evaluation"]["stability_correctness"],
    log:
        "logs/eval/{model}/{variant}/stability.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/stability.py"
