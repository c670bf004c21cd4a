# Layer importance: one calibration pass -> pair similarities -> per-metric window scores + heatmap.


rule similarity:
    input:
        manifest="results/models/{model}/manifest.json",
    output:
        pairs="results/importance/{model}/pair_similarity.safetensors",
        provenance="results/importance/{model}/provenance.json",
    params:
        calibration=config["calibration"],
        run=run_settings(),
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/similarity.tsv"
    log:
        "logs/importance/{model}/similarity.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/similarity.py"


rule importance:
    input:
        pairs="results/importance/{model}/pair_similarity.safetensors",
    output:
        csv="results/importance/{model}/{metric}.csv",
        heatmap=report(
            "results/importance/{model}/{metric}.png",
            caption="../report/importance.rst",
            category="Layer importance",
        ),
    log:
        "logs/importance/{model}/{metric}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/importance.py"
