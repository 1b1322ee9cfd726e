"""The data stage on real distributed engines: a local Ray cluster, and a single-node Slurm cluster
(tests/slurm_cluster.sh), each keep exactly the documents that the local executor keeps, with the same funnel.

Ray runs when it is installed (`pip install -e ".[ray]"`; the dev extra has it); Slurm when `sbatch` is
installed and a cluster answers (`apt-get install slurm-wlm munge && tests/slurm_cluster.sh`, as root).
Each engine runs on the synthetic crawl, and on the shared crawl sample when /work/shared/data has it.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hfstack.dataprep.config import DataConfig
from hfstack.dataprep.synthetic import write_crawl
from hfstack.stages.data import DataPipeline, build_executors, run_data

# the synthetic run of tests/stages/test_data.py: every step drops something, both dedups on, two tasks
SYNTHETIC = dict(tasks=2, progress=False, quality_filters={"gopher_repetition": {}, "gopher_quality": {}},
                 minhash={"num_buckets": 4, "hashes_per_bucket": 8})
SAMPLE = dict(tasks=2, quality=False, progress=False)  # the sample_run fixture's settings (tests/conftest.py)
SLURM_WAIT_S = 20 * 60  # a guard against a wedged cluster, not a performance bound
# datatrove's RayPipelineExecutor still passes placement_group= to Ray, which Ray 2.x deprecates
pytestmark = pytest.mark.filterwarnings("ignore:placement_group.*parameter is deprecated:DeprecationWarning")


def kept(out: Path) -> list[tuple[str, str, str]]:
    """The kept set: (id, url, text) of every output document, in a fixed order."""
    import pyarrow.parquet as pq

    rows = [row for shard in sorted(out.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]
    return sorted((row["id"], row["url"], row["text"]) for row in rows)


def text_input(folder: Path) -> Path:
    text = folder / "docs.jsonl"
    text.write_text('{"text": "The quick brown fox jumps over the lazy dog near the river bank today."}\n')
    return text


def assert_same_run(engine: dict, local: dict, engine_out: Path, local_out: Path) -> None:
    engine_kept, local_kept = kept(engine_out), kept(local_out)
    assert len(local_kept) > 0
    assert len(engine_kept) == len(local_kept)
    assert engine_kept == local_kept
    assert engine["steps"] == local["steps"]  # the same funnel: docs and bytes in/out and drops, per step


@pytest.fixture(scope="module")
def synthetic_local(tmp_path_factory):
    """The synthetic crawl and the local executor's run over it: the reference for every engine."""
    root = tmp_path_factory.mktemp("engines")
    crawl = write_crawl(root / "crawl" / "c.warc.gz", pages=60, seed=1).path
    out = root / "local"
    return crawl, out, run_data(DataConfig(input=[str(crawl)], output_dir=str(out), **SYNTHETIC))


# --- Ray --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of this machine only (2 CPUs, no dashboard), shut down after the module."""
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed: pip install -e '.[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_keeps_what_local_keeps_on_the_synthetic_crawl(ray_cluster, synthetic_local, tmp_path):
    crawl, local_out, local = synthetic_local
    out = tmp_path / "ray"
    funnel = run_data(DataConfig(input=[str(crawl)], output_dir=str(out), executor="ray", **SYNTHETIC))
    assert_same_run(funnel, local, out, local_out)
    for stage in DataPipeline(DataConfig(input=[str(crawl)], output_dir=str(out), **SYNTHETIC)).stages():
        executor = json.loads((out / "logs" / stage.name / "executor.json").read_text())
        assert "nodes_per_task" in executor and "start_method" not in executor, stage.name  # Ray's, not local's
    # rerunning skips every finished Ray task and reports the same funnel
    again = run_data(DataConfig(input=[str(crawl)], output_dir=str(out), executor="ray", **SYNTHETIC))
    assert again["steps"] == funnel["steps"]


@pytest.mark.slow
def test_ray_keeps_what_local_keeps_on_the_crawl_sample(ray_cluster, sample_run, crawl_sample, tmp_path):
    local_out, local, _ = sample_run
    out = tmp_path / "ray"
    funnel = run_data(DataConfig(input=[str(crawl_sample)], output_dir=str(out), executor="ray", **SAMPLE))
    assert_same_run(funnel, local, out, local_out)


def test_a_failed_ray_task_stops_the_run_before_the_next_stage(ray_cluster, tmp_path, monkeypatch):
    """Ray logs a failed task and returns; run_data must stop there, not let the next stage read half an output
    (nor let datatrove's dependency loop wait forever)."""
    import hfstack.stages.data as data

    real = data.DataPipeline.stages

    def broken(self):
        stages = real(self)
        stages[0].pipeline.insert(0, lambda data, rank, world_size: 1 / 0)
        return stages

    monkeypatch.setattr(data.DataPipeline, "stages", broken)
    cfg = DataConfig(input=[str(text_input(tmp_path))], output_dir=str(tmp_path / "out"), executor="ray",
                     quality=False, minhash={"num_buckets": 2}, progress=False)
    with pytest.raises(RuntimeError, match=r"stage filter: 1/1 task\(s\) failed"):
        run_data(cfg)
    assert not (tmp_path / "out" / "logs" / "exact-signatures").exists()


# --- Slurm ------------------------------------------------------------------------------------------

@functools.cache
def find_slurm() -> tuple[str | None, str]:
    """(the default partition of a Slurm cluster that answers and has a usable node, None) or (None, why not).
    Asked once per session: a configured cluster whose controller is down takes sinfo ~20 s to report."""
    if not shutil.which("sbatch"):
        return None, "sbatch not found: apt-get install slurm-wlm munge, then tests/slurm_cluster.sh (as root)"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, "no Slurm cluster answers: sinfo timed out (start one with tests/slurm_cluster.sh)"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"no Slurm cluster answers (start one with tests/slurm_cluster.sh): {reason}"
    usable = [line.split() for line in info.stdout.splitlines()
              if line.split()[-1].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return None, f"the Slurm cluster has no usable node: {info.stdout.strip() or 'sinfo lists none'}"
    default = [partition for partition, _ in usable if partition.endswith("*")]
    return (default or [usable[0][0]])[0].rstrip("*"), ""


@pytest.fixture
def slurm_partition() -> str:
    partition, why_not = find_slurm()
    if partition is None:
        pytest.skip(why_not)
    return partition


def wait_for_slurm(jobs: dict, out: Path) -> None:
    """Wait until none of `jobs` (stage -> job id) is pending or running any more."""
    ids = ",".join(str(job) for job in jobs.values())
    deadline = time.monotonic() + SLURM_WAIT_S
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T %r"], capture_output=True, text=True)
        if queue.returncode != 0 or not queue.stdout.strip():  # gone from the queue (or purged): finished
            return
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *map(str, jobs.values())])
            pytest.fail(f"Slurm jobs still queued after {SLURM_WAIT_S} s:\n{queue.stdout}")
        time.sleep(2)


def slurm_log_tail(out: Path) -> str:
    logs = sorted((out / "logs").glob("*/slurm_logs/*.out"))
    return "\n".join(f"== {log}\n{log.read_text()[-1500:]}" for log in logs[-3:])


def run_on_slurm(cfg: DataConfig, out: Path) -> dict:
    """Submit the chain, wait for it, check every stage completed, then rerun to write the funnel."""
    submitted = run_data(cfg)
    jobs = submitted["slurm_jobs"]
    assert list(jobs) == [stage.name for stage in DataPipeline(cfg).stages()]  # every stage became a job array
    wait_for_slurm(jobs, out)
    for stage, executor in zip(DataPipeline(cfg).stages(), build_executors(cfg, DataPipeline(cfg).stages())):
        failed = executor.get_incomplete_ranks(skip_completed=True)
        assert not failed, f"stage {stage.name}: ranks {failed} did not complete\n{slurm_log_tail(out)}"
    funnel = run_data(cfg)  # every task done: nothing is submitted, the funnel and stats.json are written
    assert "steps" in funnel and (out / "stats.json").is_file()
    return funnel


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_keeps_what_local_keeps_on_the_synthetic_crawl(slurm_partition, synthetic_local, tmp_path):
    crawl, local_out, local = synthetic_local
    out = tmp_path / "slurm"
    cfg = DataConfig(input=[str(crawl)], output_dir=str(out), executor="slurm", **SYNTHETIC,
                     executor_options={"partition": slurm_partition, "time": "00:30:00", "mem_per_cpu_gb": 1})
    funnel = run_on_slurm(cfg, out)
    assert_same_run(funnel, local, out, local_out)
    script = (out / "logs" / "filter" / "launch_script.slurm").read_text()
    assert f"#SBATCH --partition={slurm_partition}" in script and "launch_pickled_pipeline" in script


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_keeps_what_local_keeps_on_the_crawl_sample(slurm_partition, sample_run, crawl_sample, tmp_path):
    local_out, local, _ = sample_run
    out = tmp_path / "slurm"
    cfg = DataConfig(input=[str(crawl_sample)], output_dir=str(out), executor="slurm", **SAMPLE,
                     executor_options={"partition": slurm_partition, "time": "00:30:00", "mem_per_cpu_gb": 1})
    assert_same_run(run_on_slurm(cfg, out), local, out, local_out)


# --- construction, without a cluster ----------------------------------------------------------------

def test_slurm_script_runs_this_virtualenv_and_chains_the_stages(tmp_path):
    """The sbatch script datatrove would submit (built without sbatch): this venv's Python, the options, and
    each stage submitted with a dependency on the one before."""
    import sys

    crawl = write_crawl(tmp_path / "c.warc.gz", pages=10).path
    cfg = DataConfig(input=[crawl], output_dir=str(tmp_path / "s"), executor="slurm", tasks=4,
                     executor_options={"partition": "cpu", "time": "01:00:00", "qos": "", "requeue": False})
    executors = build_executors(cfg, DataPipeline(cfg).stages())
    first = executors[0]
    script = first.get_launch_file_contents(first.get_sbatch_args(first.tasks), "launch_pickled_pipeline x.pik")
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=01:00:00" in script
    assert "#SBATCH --array=0-3" in script and "#SBATCH --job-name=hfstack-filter" in script
    assert "--qos" not in script and "--requeue" not in script
    if sys.prefix != sys.base_prefix:
        assert f"source {sys.prefix}/bin/activate" in script
    assert executors[1].depends is executors[0] and executors[0].depends is None
    own = DataConfig(input=[crawl], output_dir=str(tmp_path / "s2"), executor="slurm",
                     executor_options={"partition": "cpu", "time": "1:00", "env_command": "module load py"})
    assert build_executors(own, DataPipeline(own).stages())[0].venv_path is None


@pytest.mark.parametrize("executor, options, message", [
    ("slurm", {"partition": "cpu", "time": "1:00", "tasks": 3}, "executor_options tasks are set by hfstack"),
    ("slurm", {"partition": "cpu", "time": "1:00", "partiton": "x"}, "partiton not accepted by the slurm"),
    ("ray", {"cpus": 2}, "cpus not accepted by the ray executor"),
    ("local", {"cpus_per_task": 2}, "cpus_per_task not accepted by the local executor"),
])
def test_bad_executor_options_are_one_line_config_errors(tmp_path, executor, options, message):
    from hfstack.core.config import ConfigError

    cfg = DataConfig(input=[str(text_input(tmp_path))], output_dir=str(tmp_path / "o"), executor=executor,
                     executor_options=options)
    with pytest.raises(ConfigError, match=message) as error:
        build_executors(cfg, DataPipeline(cfg).stages()[:1])
    assert "\n" not in str(error.value)


def test_ray_executors_run_in_order_without_chaining(tmp_path):
    """run_data runs Ray stages one by one and checks each; `address` is hfstack's, not datatrove's."""
    cfg = DataConfig(input=[str(text_input(tmp_path))], output_dir=str(tmp_path / "o"), executor="ray",
                     executor_options={"address": "auto", "cpus_per_task": 1})
    executors = build_executors(cfg, DataPipeline(cfg).stages())
    assert all(e.depends is None for e in executors) and executors[0].cpus_per_task == 1
