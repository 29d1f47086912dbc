"""What every job shares at run time: Ray start-up, and the lock under which models are built in a process."""

from __future__ import annotations

import threading

# transformers' from_pretrained (and peft's adapter loading) build a model under accelerate's init_empty_weights,
# which swaps nn.Module.register_parameter for the whole process: a module built in any other thread meanwhile
# gets weights on the meta device, with no data ("Cannot copy out of meta tensor" later). The jobs build models
# in threads (the variants, the ACC table rows, evaluations side by side, the pages' loaders), so every in-process
# construction holds this lock. Re-entrant: loading an adapter loads its base inside.
MODEL_BUILDING = threading.RLock()


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster a job was submitted to (``RAY_ADDRESS``, as ``ray job submit`` sets it), or start a
    local instance with ``num_cpus`` (default: all). Ray Data's own progress bars are turned off: the jobs print
    their own (``audiopair.progress``), at most a line every 15 s in a log."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
