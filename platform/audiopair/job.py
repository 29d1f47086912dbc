"""What every script in ``jobs/`` does around its own steps: logging, the config from the command line, a clock for
progress lines, Ray, the dataset build and MLflow, and one way to fail (``error: ...`` on stderr, an exit code).

A job script is then only its steps, readable top to bottom (torchtune's recipe idea)::

    @job.entry(__doc__)
    def main(run: job.Job) -> int:
        built = run.build_dataset()
        run.start_mlflow()
        ...

``main(argv)`` stays callable from tests and returns the exit code.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from audiopair.config import Config, ConfigError, config_from_argv


class JobError(Exception):
    """Ends the job: ``error: <message>`` on stderr and exit ``code`` (1: failed, 2: refused the input)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Job:
    cfg: Config
    t0: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        """A progress line stamped with the seconds since the job started; one write, as threads share stdout."""
        print(f"{self.seconds():6.0f}s  {msg}\n", end="", flush=True)

    def build_dataset(self):
        """Ray, then the dataset of ``cfg.dataset`` (a finished build is reused, an interrupted one resumed)."""
        from audiopair.data.pipeline import BuildError, build_dataset
        from audiopair.runtime import ensure_ray

        ensure_ray()
        try:
            built = build_dataset(self.cfg.dataset, progress=lambda m: None)
        except BuildError as e:
            raise JobError(str(e)) from None
        self.say(f"dataset {built.out_dir}: {built.clips} clips ({built.seconds:.0f} s)")
        return built

    def start_mlflow(self) -> str:
        """Point MLflow at ``work_dir``'s store (or ``MLFLOW_TRACKING_URI``) and the config's experiment."""
        from audiopair import tracking

        uri = tracking.setup(self.cfg.work_dir, self.cfg.experiment)
        self.say(f"MLflow: {uri}, experiment {self.cfg.experiment!r}")
        return uri


def entry(doc: str, log_level: int = logging.WARNING) -> Callable[[Callable[[Job], int]], Callable[..., int]]:
    """Turns ``body(job) -> exit code`` into ``main(argv=None) -> exit code``: parses ``[--config FILE] [key=value
    ...]`` (``doc`` is the help text) and reports a ``JobError`` or ``ConfigError`` as ``error: ...``."""

    def wrap(body: Callable[[Job], int]) -> Callable[..., int]:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            run = Job(config_from_argv(argv, doc))
            try:
                return body(run)
            except JobError as e:
                print(f"error: {e}", file=sys.stderr)
                return e.code
            except ConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2

        return main

    return wrap
