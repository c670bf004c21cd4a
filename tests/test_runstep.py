"""runstep.logged_step: a job's torch threads never exceed the CPUs it may run on (issue 21: `--cores 8` on a
2-core machine)."""

from __future__ import annotations

import os

import torch

from streamline.workflow.runstep import job_threads, logged_step


def test_threads_are_capped_at_the_available_cpus(tmp_path):
    available = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        with logged_step(tmp_path / "job.log", "job", threads=available + 6):  # `--cores 8`, `threads: 8` here
            assert torch.get_num_threads() == available
        with logged_step(tmp_path / "job.log", "job", threads=1):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert job_threads(available + 6) == available and job_threads(1) == 1
