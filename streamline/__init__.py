"""llm-streamline: layer pruning of causal LMs following LLM-Streamline (Chen et al., ICLR 2025).

The package is the algorithmic ground floor of the Snakemake workflow: it takes tensors, models and
paths and never imports Snakemake or reads the workflow config.
"""

__version__ = "0.1.0"
