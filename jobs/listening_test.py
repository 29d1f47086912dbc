"""A blind listening test of two or more models (ADIFF Table 3, App. I.2): build it, serve it to raters, report.

    python jobs/listening_test.py                  # build the demo study (if not built yet) and serve it
    python jobs/listening_test.py build            # only build and freeze the study (study.*)
    python jobs/listening_test.py serve            # serve a built study: prints one link per rater
    python jobs/listening_test.py --report work/studies/demo     # Table 3, CIs, alpha, PNG -> MLflow

    python jobs/listening_test.py build study.output_dir=work/studies/t3 study.pairs_per_tier=5 \\
        study.raters='[ann, bob, cyd, dee, eve]' study.scenarios='[
          {name: studio, predictions: [work/reports/studio-evaluate]},
          {name: fsd50k, predictions: [0123456789abcdef0123456789abcdef], dataset: /data/fsd-pairs},
          {name: gtzan, predictions: [work/reports/gtzan-evaluate], pairs: gtzan_pairs.csv}]'
    python jobs/listening_test.py serve study.output_dir=work/studies/t3 serve.host=0.0.0.0 \\
        serve.database=postgresql://mlflow:...@postgres/ratings

A scenario's predictions are report folders of jobs/evaluate.py / train_adiff.py (``predictions/<model>.jsonl``)
or MLflow run ids of those jobs (then ``dataset`` names the dataset folder that holds the audio). The study is
frozen into ``study.output_dir`` (study.json, raters.json with each rater's token, audio/); ratings go to
``serve.database`` (default: SQLite ``<study>/ratings.db``). The server binds 127.0.0.1 unless ``serve.host`` says
otherwise. The report goes to ``<study>/report/`` and to an MLflow run ``listening-test/<study name>``.
"""

import sys
from pathlib import Path

from audiopair import job
from audiopair.serve.study import STUDY_FILE, StudyError, build_study, load_study, rater_links

ACTIONS = ("build", "serve", "report")
_action = ["all"]  # set by cli() from the first word; main() stays the usual job body over the config


@job.entry(__doc__)
def main(run: job.Job) -> int:
    cfg, say = run.cfg, run.say
    action = _action[0]
    folder = Path(cfg.study.output_dir)
    try:
        if action in ("build", "all") and not (action == "all" and (folder / STUDY_FILE).exists()):
            build_study(cfg.study, say)
        if action == "report":
            return report(run, folder)
        if action in ("serve", "all"):
            return serve(run, folder)
    except StudyError as e:
        raise job.JobError(str(e), code=2) from None
    return 0


def serve(run: job.Job, folder: Path) -> int:
    import uvicorn

    from audiopair.serve.app import create_app

    s = run.cfg.serve
    app = create_app(folder, s.database)
    study = app.state.study
    base = f"http://{s.host}:{s.port}"
    run.say(f"serving study {study.name} ({len(study.items)} items) on {base}; ratings in "
            f"{s.database or folder / 'ratings.db'}; rater links:")
    for name, link in rater_links(study, base).items():
        print(f"  {name}: {link}", flush=True)
    uvicorn.run(app, host=s.host, port=s.port, log_level="warning")
    return 0


def report(run: job.Job, folder: Path) -> int:
    from audiopair.serve.report import log_report, make_report, markdown, write_report
    from audiopair.serve.store import RatingStore, default_url

    cfg = run.cfg
    study = load_study(folder)
    store = RatingStore(cfg.serve.database or default_url(folder), study.fingerprint)
    rep = make_report(study, store.ratings(), cfg.study.bootstrap, cfg.study.seed, cfg.study.alpha_level)
    if rep.ratings.empty:
        raise job.JobError(f"{folder}: no ratings yet in {cfg.serve.database or default_url(folder)}", code=2)
    paths = write_report(rep, study, folder / "report")
    run.start_mlflow()
    run_id = log_report(rep, study, paths)
    print(markdown(rep, study))
    run.say(f"done: {paths['md']}, {paths['png']}, MLflow run {run_id}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``[build|serve|report] [--report STUDY] [--config FILE] [key=value ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    action = argv.pop(0) if argv and argv[0] in ACTIONS else "all"
    if "--report" in argv:
        i = argv.index("--report")
        if i + 1 >= len(argv):
            print("error: --report needs the study folder", file=sys.stderr)
            return 2
        argv[i:i + 2] = [f"study.output_dir={argv[i + 1]}"]
        action = "report"
    _action[0] = action
    try:
        return main(argv)
    finally:
        _action[0] = "all"


if __name__ == "__main__":
    sys.exit(cli())
