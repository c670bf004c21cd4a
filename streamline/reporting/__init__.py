"""Reporting (step 5): every result file of an experiment into all.csv, then its tables, figures and the paper's items.

- collect.py: all.csv, one tidy row per (variant, task, metric)
- tables.py: the summary tables (main, stability)
- plots.py: the figures against sparsity, healing cost and the importance heatmap
- paper.py: the paper's tables and figures
"""
