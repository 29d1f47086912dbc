"""Ray start-up, shared by every job: the build, training, evaluation, the sweep and the benchmarks."""

from __future__ import annotations


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster a job was submitted to (``RAY_ADDRESS``, as ``ray job submit`` sets it), or start a
    local instance with ``num_cpus`` (default: all). Ray Data's own progress bars are turned off: the jobs print
    their own (``audiopair.progress``), at most a line every 15 s in a log."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
