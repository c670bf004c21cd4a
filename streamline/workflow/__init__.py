"""The workflow's side of the package: one function per rule (steps.py), the job wrapper that turns a failure
into one line (runstep.py), the config schema and checks, and user plugins.
"""
