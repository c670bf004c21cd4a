"""The tiny DAG through a real SLURM scheduler (issue 24).

tests/cluster/slurm_up.sh brings up a one-node cluster on this machine (.ci/run does so before the suite); without
a reachable one the module skips with one line. One module fixture starts three runs at the same time, each in its
own folder, sharing one tiny checkpoint (so the configs, and their config_hash, are equal):

- local:   `snakemake --cores 2 {all.csv}`, the reference all.csv;
- slurm:   `--profile profiles/slurm --profile tests/cluster/profile {all.csv}` (the real profile plus the test
           overlay for partition, account and squeue status); then the same command once more (no-op). The target is
           the experiment's all.csv, not the default one: the plots and tables would add seven local jobs (~40 s of
           CPU on 2 cores) and test nothing more about SLURM. Its first job (acquire_model) is killed with scancel
           as soon as SLURM lists it: the profile's `retries: 1` resubmits it and the run completes;
- failing: the same profiles with an injected bad setting: `device: cuda` on a node without CUDA (and
           `resources.gpu: true`, so its jobs ask SLURM for a GPU), targeting the similarity job, `--retries 0`
           (the profile's retries are the cancel's; a second failing attempt would add a minute and show nothing
           new): acquire_model completes, similarity fails and the workflow stops naming the job's SLURM log.

Where each check reads: the Snakemake output (`Job N has been submitted with SLURM jobid M (log: ...)`, `rule` /
`localrule` blocks), `scontrol show job M` (what slurmctld granted; the test cluster keeps finished jobs for
MinJobAge = 3600 s), the SLURM log files (the overlay keeps them) and all.csv.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    TINY_RUN,
    dag_paths,
    experiment_dir,
    make_model,
    make_tokenizer,
    save_tiny_checkpoint,
    snakemake_cmd,
)
from test_cluster import HEAVY, LIGHT

from streamline.reporting.collect import COLUMNS, MACHINE_METRICS

pytestmark = pytest.mark.slow

PARTITION = "streamline"  # tests/cluster/slurm_up.sh
OVERLAY = REPO / "tests/cluster/profile"
SLURM_ARGS = ("--profile", str(REPO / "profiles/slurm"), "--profile", str(OVERLAY))
ALL_CSV = "results/experiments/default/tables/all.csv"
RUN_TIMEOUT = 900  # seconds, per run; the three runs together take ~3-8 min on 2 busy cores

TINY_SLURM = {
    **TINY_RUN,
    "methods": ["streamline"],
    "healing": ["replacement"],
    "replacements": ["linear"],  # dense + one trained variant: every model-running rule, 9 SLURM jobs
    "training": {
        "samples": 8,
        "val_samples": 4,
        "seq_len": 32,
        "epochs": 1,
        "batch_size": 4,
        "lr": 0.003,
        "shard_sequences": 4,
    },
    "evaluation": {"tasks": ["piqa_mirror"], "limit": 4, "batch_size": 4},
    # the test node has 2 CPUs: the default 8 CPUs a job could never be scheduled there
    "resources": {"cpus_per_task": 1},
}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
BLOCK = re.compile(r"^(localrule|rule) (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")


def slurm_missing() -> str | None:
    """Why no SLURM cluster with the test partition is reachable here, or None when one is."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo/sbatch not found); as root, tests/cluster/slurm_up.sh brings up a one-node cluster"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%t"], check=False, capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "SLURM not responding: sinfo timed out after 15 s (tests/cluster/slurm_up.sh starts the daemons)"
    if proc.returncode != 0:
        return f"SLURM not responding: {(proc.stderr.strip().splitlines() or ['sinfo failed'])[0]}"
    states = [s.rstrip("*~#$@^-") for s in proc.stdout.split()]
    if not states:
        return f"no SLURM partition {PARTITION!r} (the one-node test cluster of tests/cluster/slurm_up.sh)"
    if not {"idle", "mix", "alloc", "comp"} & set(states):
        return f"SLURM partition {PARTITION!r} has no usable node (state: {', '.join(states)})"
    return None


@dataclass
class Run:
    workdir: Path
    returncode: int
    output: str
    seconds: float

    def jobs(self) -> dict[int, tuple[str, bool]]:
        """Snakemake job id -> (rule, whether it ran as a localrule), from the run's rule blocks."""
        jobs, current = {}, None
        for line in self.output.splitlines():
            if head := BLOCK.match(line):
                current = (head.group(2), head.group(1) == "localrule")
            elif (found := JOBID.match(line)) and current:
                jobs[int(found.group(1))] = current
                current = None
        return jobs

    def submissions(self) -> dict[int, list[tuple[str, Path]]]:
        """Snakemake job id -> [(SLURM job id, SLURM log)] in submission order (a retry adds one)."""
        subs: dict[int, list[tuple[str, Path]]] = {}
        for job, slurm_id, log in SUBMITTED.findall(self.output):
            subs.setdefault(int(job), []).append((slurm_id, Path(log)))
        return subs

    def submissions_of(self, rule: str) -> list[tuple[str, Path]]:
        jobs = self.jobs()
        return [sub for job, subs in self.submissions().items() if jobs[job][0] == rule for sub in subs]


def scontrol(slurm_id: str) -> dict[str, str]:
    """`scontrol show job ID` as key -> value."""
    proc = subprocess.run(
        ["scontrol", "show", "job", slurm_id], check=False, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, f"scontrol show job {slurm_id}: {proc.stderr.strip()}"
    return dict(re.findall(r"(\S+?)=(\S*)", proc.stdout))


def start(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    out = workdir / "snakemake.out"
    with out.open("w") as log:
        proc = subprocess.Popen(
            snakemake_cmd(workdir, workdir / "config.yaml", *args), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
    return proc, out


def stop(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    """Stop every run and scancel what it left queued or running (each run's jobs carry its run id as job name)."""
    for proc, out in procs.values():
        proc.terminate()
        if found := re.search(r"SLURM run ID: (\S+)", out.read_text()):
            subprocess.run(["scancel", "--name", found.group(1)], check=False, timeout=30)


def finish_all(procs: dict[str, tuple[subprocess.Popen, Path]], started: float) -> dict[str, Run]:
    """Wait for every run (each timed from `started` to its own end); stop them all after RUN_TIMEOUT."""
    ended: dict[str, float] = {}
    while len(ended) < len(procs):
        for name, (proc, _) in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic() - started
        if time.monotonic() - started > RUN_TIMEOUT:
            stop(procs)
            late = ", ".join(sorted(set(procs) - set(ended)))
            pytest.fail(f"snakemake still running after {RUN_TIMEOUT} s: {late}")
        time.sleep(0.5)
    return {name: Run(out.parent, proc.returncode, out.read_text(), ended[name]) for name, (proc, out) in procs.items()}


def cancel_first(proc: subprocess.Popen, out: Path, comment: str) -> str:
    """scancel the first job of this run (SLURM job name = the run's id) whose comment starts with `comment`, as
    soon as squeue lists it (pending or running); its SLURM job id."""
    deadline = time.monotonic() + 300
    run_id = None
    while time.monotonic() < deadline and proc.poll() is None:
        if run_id is None and (found := re.search(r"SLURM run ID: (\S+)", out.read_text())):
            run_id = found.group(1)
        if run_id is not None:
            listed = subprocess.run(
                ["squeue", "-h", "--states=PENDING,RUNNING", "--name", run_id, "-o", "%i|%k"],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
            for slurm_id, job_comment in (line.split("|", 1) for line in listed):
                if job_comment.startswith(comment):
                    subprocess.run(["scancel", slurm_id], check=True, timeout=30)
                    return slurm_id
        time.sleep(0.25)
    pytest.fail(f"no {comment} job of the run in {out.parent} appeared in squeue:\n{out.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    tokenizer = make_tokenizer()
    source = save_tiny_checkpoint(make_model(len(tokenizer), num_layers=6), tokenizer, base / "tiny-src")
    config = {"models": {"tiny": {"local": str(source)}}, **TINY_SLURM}
    failing = {**config, "device": "cuda", "resources": {**config["resources"], "gpu": True}}
    dirs = {name: base / name for name in ("local", "slurm", "failing")}
    for name, workdir in dirs.items():
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(failing if name == "failing" else config))
    (similarity,) = dag_paths(
        dirs["failing"], dirs["failing"] / "config.yaml", "results/importance/tiny/*/pair_similarity.safetensors"
    )

    started = time.monotonic()
    procs = {
        "local": start(dirs["local"], "--cores", "2", ALL_CSV),
        "slurm": start(dirs["slurm"], *SLURM_ARGS, ALL_CSV),
        "failing": start(dirs["failing"], *SLURM_ARGS, "--retries", "0", similarity),
    }
    try:
        cancelled = cancel_first(*procs["slurm"], "rule_acquire_model")
    except BaseException:
        stop(procs)
        raise
    result = finish_all(procs, started)
    noop_started = time.monotonic()
    proc = subprocess.run(
        snakemake_cmd(dirs["slurm"], dirs["slurm"] / "config.yaml", *SLURM_ARGS, ALL_CSV),
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result["noop"] = Run(dirs["slurm"], proc.returncode, proc.stdout + proc.stderr, time.monotonic() - noop_started)
    result["cancelled"] = cancelled
    print(
        "\nSLURM test runs (s): " + ", ".join(f"{k} {v.seconds:.0f}" for k, v in result.items() if isinstance(v, Run))
    )
    return result


def test_model_jobs_go_through_sbatch_and_light_jobs_stay_local(runs):
    run = runs["slurm"]
    assert run.returncode == 0, run.output[-4000:]
    jobs, subs = run.jobs(), run.submissions()
    assert {rule for rule, local in jobs.values() if not local} == HEAVY
    assert {rule for rule, local in jobs.values() if local} == {"importance", "prune", "stability", "aggregate"}
    assert {rule for rule, local in jobs.values() if local} <= LIGHT  # the Snakefile's localrules
    for job, (rule, local) in jobs.items():
        if local:
            assert job not in subs, f"localrule {rule} (job {job}) was submitted to SLURM"
            continue
        expected = 2 if rule == "acquire_model" else 1  # acquire_model: killed once (test below), resubmitted
        assert len(subs.get(job, [])) == expected, f"{rule} (job {job}): SLURM submissions {subs.get(job)}"
        slurm_id, log = subs[job][-1]
        assert log.is_file() and log.name == f"{slurm_id}.log"
        assert f"rule {rule}:" in log.read_text()  # the job ran this rule on the node (the jobstep executor)
    # acquire, similarity, replace, and accuracy/perplexity/model_stats of dense and streamline-linear
    assert len(subs) == 9


def expected_mem_mb(source: Path) -> int:
    """rules/common.smk heavy_mem_mb: checkpoint (float32: 4 B/parameter) + 30%, + 4 GB."""
    params = json.loads((source / "manifest.json").read_text())["parameters"]
    return math.ceil((params / 1e9 * 4 * 1.3 + 4) * 1024)


def test_resources_reach_the_job(runs):
    run = runs["slurm"]
    mem = expected_mem_mb(run.workdir.parent / "tiny-src")
    for slurm_id, _ in (sub for subs in run.submissions().values() for sub in subs):
        job = scontrol(slurm_id)
        assert job["JobState"] == ("CANCELLED" if slurm_id == runs["cancelled"] else "COMPLETED"), slurm_id
        assert (job["Partition"], job["Account"]) == (PARTITION, "streamline-ci")  # the overlay's site settings
        assert job["NumCPUs"] == "1" and job["CPUs/Task"] == "1"  # resources.cpus_per_task
        assert job["MinMemoryNode"] == f"{mem}M"  # heavy_mem_mb of the tiny model
        assert job["TimeLimit"] == "00:30:00"  # heavy_runtime: int(30 + 20 min x 0.0001 B)
        assert "TresPerJob" not in job  # gpu = 0 (resources.gpu auto, below 1B parameters): no GPU asked
    # resources.gpu: true -> gpu = 1 on every model-running rule -> --gpus=1, granted from the node's (count-only)
    # gpu GRES: acquire_model completed with it, similarity failed with it
    failing = runs["failing"]
    for rule in ("acquire_model", "similarity"):
        (submission,) = failing.submissions_of(rule)
        assert scontrol(submission[0])["TresPerJob"] == "gres:gpu:1", rule


def machine_free_rows(path: Path) -> list[str]:
    """all.csv's lines, the value of each MACHINE_METRICS row (speed, time, memory of the machine) blanked; every
    other line byte for byte."""
    lines = path.read_text().splitlines(keepends=True)
    metric, value = COLUMNS.index("metric"), COLUMNS.index("value")
    rows = []
    for line in lines[1:]:
        (fields,) = list(csv.reader(io.StringIO(line)))
        if fields[metric] in MACHINE_METRICS:
            float(fields[value])
            fields[value] = ""
            line = ",".join(fields) + "\n"
        rows.append(line)
    return [lines[0], *rows]


def test_all_csv_equals_the_local_run(runs):
    local, slurm = runs["local"], runs["slurm"]
    assert local.returncode == 0, local.output[-4000:]
    assert slurm.returncode == 0, slurm.output[-4000:]
    local_csv, slurm_csv = (experiment_dir(r.workdir) / "tables/all.csv" for r in (local, slurm))
    local_rows, slurm_rows = machine_free_rows(local_csv), machine_free_rows(slurm_csv)
    assert slurm_rows == local_rows
    blanked = [line for line in local_rows if any(f",{m},," in line for m in MACHINE_METRICS)]
    assert len(blanked) >= 5 and len(local_rows) > 3 * len(blanked)  # the exception is a few rows, not the table


def test_a_second_run_does_nothing(runs):
    noop = runs["noop"]
    assert noop.returncode == 0, noop.output[-3000:]
    assert "Nothing to be done" in noop.output
    assert not SUBMITTED.search(noop.output)


def test_a_killed_job_is_resubmitted(runs):
    run = runs["slurm"]
    attempts = run.submissions_of("acquire_model")
    assert [slurm_id for slurm_id, _ in attempts] == [runs["cancelled"], attempts[1][0]]
    assert [scontrol(slurm_id)["JobState"] for slurm_id, _ in attempts] == ["CANCELLED", "COMPLETED"]
    assert f"SLURM-job '{runs['cancelled']}' failed, SLURM status is: 'CANCELLED'" in run.output
    assert "Trying to restart job" in run.output and run.returncode == 0


def test_a_failing_job_fails_the_workflow_naming_its_slurm_log(runs):
    failing = runs["failing"]
    assert failing.returncode != 0
    ((slurm_id, log),) = failing.submissions_of("similarity")
    assert scontrol(slurm_id)["JobState"] == "FAILED"
    # the job's one line, in its SLURM log
    assert "similarity[tiny]: device 'cuda': 0 CUDA device(s) visible on" in log.read_text()
    error = failing.output[failing.output.index("Error in rule similarity:") :]
    assert f"SLURM-job '{slurm_id}' failed" in error and "log: " in error and str(log) in error
    assert not list((failing.workdir / "results/importance").rglob("pair_similarity.safetensors"))
