"""audiopair.job: what every script in jobs/ shares (command line, progress lines, exit codes)."""

import re

from audiopair import job
from conftest import REPO


def test_entry_parses_the_command_line_and_turns_errors_into_exit_codes(tmp_path, capsys):
    seen = {}

    @job.entry("a job that does nothing")
    def main(run: job.Job) -> int:
        seen["cfg"] = run.cfg
        run.say("hello")
        if run.cfg.train.run_name == "refuse":
            raise job.JobError("train.run_name: refused", code=2)
        if run.cfg.train.run_name == "fail":
            raise job.JobError("it broke")
        return 0

    config = str(REPO / "jobs" / "configs" / "demo.yaml")
    assert main(["--config", config, f"work_dir={tmp_path}"]) == 0
    assert seen["cfg"].work_dir == str(tmp_path)  # overrides reach the job's config
    out = capsys.readouterr().out
    assert re.fullmatch(r" +\d+s  hello\n", out)  # seconds since the job started, then the message

    assert main(["--config", config, "train.run_name=refuse"]) == 2
    assert capsys.readouterr().err == "error: train.run_name: refused\n"
    assert main(["--config", config, "train.run_name=fail"]) == 1
    assert capsys.readouterr().err == "error: it broke\n"


def test_a_config_error_raised_inside_a_job_is_exit_2_naming_the_key(capsys):
    from audiopair.config import ConfigError

    @job.entry("")
    def main(run: job.Job) -> int:
        raise ConfigError("sweep.space.model.lm_dimm: unknown key")

    assert main(["--config", str(REPO / "jobs" / "configs" / "demo.yaml")]) == 2
    assert "error: sweep.space.model.lm_dimm: unknown key" in capsys.readouterr().err


def test_each_job_in_one_process_logs_to_its_own_work_dir_unless_the_user_names_a_server(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second job in the same process once took that for the
    user's setting and logged into the first job's store (the sweep test caught it under xdist)."""
    from audiopair import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_local_uris", set())
    first = tracking.setup(tmp_path / "a", "exp")
    assert first == f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    assert tracking.setup(tmp_path / "b", "exp") == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    assert (tmp_path / "b" / "mlflow.db").is_file()
    server = f"sqlite:///{tmp_path / 'server.db'}"  # what a user exports (a server URL in practice)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert tracking.setup(tmp_path / "c", "exp") == server and not (tmp_path / "c").exists()
    assert tracking.setup(tmp_path / "d", "exp") == server  # still the user's, after MLflow re-exported it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)  # an earlier job's store put back (as monkeypatch undoes)
    assert tracking.setup(tmp_path / "e", "exp") == f"sqlite:///{tmp_path / 'e' / 'mlflow.db'}"
