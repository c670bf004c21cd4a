# Everything into one tidy table.


rule aggregate:
    input:
        plans=expand(
            "results/compressed/{model}/{variant}/compressed.json", model=MODELS, variant=compressed_variants()
        ),
        manifests=expand("results/models/{model}/manifest.json", model=MODELS),
        importance=expand(
            "results/importance/{model}/{metric}.csv", model=MODELS, metric=config["importance"]["metrics"]
        ),
        accuracy=eval_outputs("accuracy.json"),
        ppl=eval_outputs("ppl.json"),
        stats=eval_outputs("model_stats.json"),
        stability=eval_outputs("stability.json"),
    output:
        table="results/tables/all.csv",
    params:
        config_hash=config_hash_of(config),
        seed=config["calibration"]["seed"],
    log:
        "logs/aggregate.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/aggregate.py"
