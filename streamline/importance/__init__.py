"""Importance (the paper's step 1): one calibration pass keeps every residual state; each window of n layers
gets the mean per-token cosine (or angular distance) between the state entering and the state leaving it.

- hidden_states.py: the residual states h_0..h_L of a batch (hooks)
- scores.py: running pair similarities over the calibration batches (torch)
- windows.py: the window table, the best window, its CSV and heatmap; the metric names (no torch)
"""
