"""llm-streamline: layer pruning of causal LMs following LLM-Streamline (Chen et al., ICLR 2025).

The package is the algorithmic ground floor of the Snakemake workflow: it takes tensors, models and paths and never
imports Snakemake or reads the workflow config. One subpackage per stage of the method, in the order data flows:

- acquisition: a model from its source into a checkpoint folder; the per-family layout
- importance: one calibration pass -> the similarity of every window of layers
- pruning: criteria -> a plan (the layers removed) -> layer surgery
- healing: what takes the window's place (replacement modules, LoRA, fits) and how it trains
- evaluation: harness accuracy, perplexity, stability, speed
- reporting: all.csv, tables, figures, the paper's items
- workflow: one function per rule (steps.py), the job wrapper, config schema and checks, plugins, the variants and
  settings keys of a config (variants.py)

Shared by all stages: atomic.py (atomic writes), data.py (the data mirror, calibration and training windows),
numerics.py (the first NaN/Inf of a result), provenance.py (what produced a folder, settings keys), scratch.py
(scratch folders).
"""

__version__ = "0.1.0"
