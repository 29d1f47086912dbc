"""Build a paired-audio dataset (AC, ADC, ACC, ADIFF tiers, position captioning) with Ray Data.

    python jobs/build_dataset.py                                   # the demo corpus
    python jobs/build_dataset.py --config jobs/configs/acc_audiocaps.yaml dataset.num_workers=8

With ``dataset.features.embeddings=true`` the frozen ``model.encoder``'s embeddings are cached too
(``features/embeddings-<fingerprint>/``), computed once on a Ray Data actor pool.
"""

import logging
import sys

from audiopair import job
from audiopair.data.pipeline import BuildError, build_dataset


@job.entry(__doc__, log_level=logging.INFO)
def main(run: job.Job) -> int:
    cfg = run.cfg
    try:
        result = build_dataset(cfg.dataset)  # its progress lines as they come (the other jobs build quietly)
    except BuildError as e:
        raise job.JobError(str(e)) from None
    print(f"built {result.out_dir}: {result.clips} clips, {result.rejected} rejected, {result.seconds:.1f} s")
    for name, n in result.manifests.items():
        print(f"  {name}: {n} examples")
    f = cfg.dataset.features
    if f.embeddings:
        from audiopair.models.adiff import encoder_config_of
        from audiopair.train.embeddings import cache_embeddings, cache_kind

        key = cache_embeddings(result.out_dir, encoder_config_of(cfg.model), f.embedding_actors, f.embedding_gpus)
        print(f"  embeddings of {cfg.model.encoder.pretrained or 'a random encoder'}: features/{cache_kind(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
