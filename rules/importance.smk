# Layer importance: one calibration pass -> pair similarities -> per-metric window scores + heatmap.
# Folder results/importance/{model}/{key}: key = settings_key(similarity_settings()) (rules/common.smk).


rule similarity:
    input:
        manifest="results/models/{model}/manifest.json",
        text=calibration_files,  # the calibration text (mirror file or text file): editing it re-runs this job
    output:
        pairs="results/importance/{model}/{key}/pair_similarity.safetensors",
        provenance="results/importance/{model}/{key}/provenance.json",
    params:
        key_settings=lambda wc: keyed(wc.key, similarity_settings(), f"similarity[{wc.model}]"),
        calibration=similarity_settings()["calibration"],
        run=similarity_settings()["run"],
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/similarity/{key}.tsv"
    log:
        "logs/importance/{model}/{key}/similarity.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/similarity.py"


rule importance:
    input:
        pairs="results/importance/{model}/{key}/pair_similarity.safetensors",
    output:
        csv="results/importance/{model}/{key}/{metric}.csv",
        heatmap=report(
            "results/importance/{model}/{key}/{metric}.png",
            caption="../report/importance.rst",
            category="Layer importance",
        ),
    log:
        "logs/importance/{model}/{key}/{metric}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/importance.py"
