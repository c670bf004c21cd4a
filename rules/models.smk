# Model acquisition: hf / local / gguf source -> standard checkpoint folder + manifest.json.


rule acquire_model:
    input:
        source=model_source_files,
    output:
        manifest="results/models/{model}/manifest.json",
        provenance="results/models/{model}/provenance.json",
    params:
        source=model_source,
        dtype=config["checkpoint_dtype"],
    threads: HEAVY_THREADS
    resources:
        mem_mb=heavy_mem_mb,
        runtime=heavy_runtime,
        gpu=heavy_gpus,
        cpus_per_task=config["resources"]["cpus_per_task"],
    benchmark:
        "results/benchmarks/{model}/acquire_model.tsv"
    log:
        "logs/models/{model}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/acquire_model.py"
