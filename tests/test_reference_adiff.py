"""Exactness against ADIFF's reference implementation (soham97/ADIFF), through tests/data/adiff_reference/: a
checkpoint in the released key layout with random weights at reduced sizes, and the reference code's own outputs at
every step (see its README.md). Also: the full-size layout, refusals, the HTSAT converters."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audiopair.config import FeatureConfig
from audiopair.data.features import dft_basis, logmel, mel_filters
from audiopair.models.htsat import CheckpointError, from_clap, read_class_labels, read_state, split_htsat, to_clap
from conftest import REPO

FIXTURE = Path(__file__).parent / "data" / "adiff_reference"
EXPECTED = load_file(str(FIXTURE / "expected.safetensors"))
EXAMPLES = json.loads((FIXTURE / "examples.json").read_text())
TEXTS = {k: v["text"] for k, v in json.loads((FIXTURE / "expected.json").read_text())["examples"].items()}
CLIPS = ("tone_chord", "noise_bursts", "chirp_clicks")

pytestmark = pytest.mark.usefixtures("one_thread")


def wav(name: str) -> np.ndarray:
    """As the reference's loader reads 16-bit PCM: int16 / 32768 as float32."""
    x, _ = sf.read(FIXTURE / "audio" / f"{name}.wav", dtype="int16")
    return x.astype(np.float32) / 32768


def mel(name: str) -> torch.Tensor:
    return torch.from_numpy(logmel(wav(name), 32000, FeatureConfig()))[None]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The fixture checkpoint imported through the job, as a user would: ``jobs/import_adiff.py``."""
    import importlib.util

    tmp = tmp_path_factory.mktemp("imported")
    spec = importlib.util.spec_from_file_location("import_adiff", REPO / "jobs" / "import_adiff.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    code = job.main([str(FIXTURE / "checkpoint.pth"), str(tmp / "model"), "--reference-config",
                     str(FIXTURE / "reference_config.yaml"), f"work_dir={tmp / 'work'}", "experiment=import"])
    assert code == 0
    return tmp / "model"


def test_front_end_equals_the_reference_log_mels():
    """Slaney mel filters (fmin 50, fmax 14000) and the windowed DFT are the checkpoint's own front-end weights, and
    the log-mels equal the reference's within 1e-4 dB."""
    state = read_state(FIXTURE / "checkpoint.pth")
    real, imag = dft_basis(1024)
    assert torch.equal(real, state["audio_encoder.base.htsat.spectrogram_extractor.stft.conv_real.weight"])
    assert torch.equal(imag, state["audio_encoder.base.htsat.spectrogram_extractor.stft.conv_imag.weight"])
    assert np.abs(mel_filters(32000, 1024, 64, 50, 14000) - state["audio_encoder.base.htsat.logmel_extractor.melW"]
                  .numpy()).max() < 1e-8
    for clip in CLIPS:
        ours = logmel(wav(clip), 32000, FeatureConfig())
        assert ours.shape == (64, 1001)
        assert np.abs(ours.T - EXPECTED[f"clip.{clip}.logmel"].numpy()).max() < 1e-4


def test_imported_model_reproduces_every_reference_tensor(imported):
    from audiopair.models.adiff import load_checkpoint
    from audiopair.models.tokenizer import load_tokenizer, model_prompts

    model = load_checkpoint(imported).eval()
    model.accept_embeddings = True
    tok = load_tokenizer(imported / "tokenizer")
    with torch.no_grad():
        for clip in CLIPS:
            out = model.encoder(mel(clip))
            assert (out.embedding[0] - EXPECTED[f"clip.{clip}.embedding"]).abs().max() < 1e-5
            assert (out.clip_logits.sigmoid()[0] - EXPECTED[f"clip.{clip}.clipwise_output"]).abs().max() < 1e-5
            frames = EXPECTED[f"clip.{clip}.framewise_output_dedup"]  # (32, 527): HTSAT's 32 distinct time steps
            assert out.frame_probs.shape == (1, 32, 527)
            assert (out.frame_probs[0] - frames).abs().max() < 1e-5
            projected = model.audio_projection(out.embedding)
            assert (projected[0] - EXPECTED[f"clip.{clip}.audio_embed"]).abs().max() < 1e-5
        for ex in EXAMPLES:
            key = f"example.{ex['id']}"
            ids, mask = model_prompts(tok, model, [ex["prompt"]])
            assert torch.equal(ids[0], EXPECTED[f"{key}.input_ids"])  # prompt + " <|endoftext|>", "!"-padded to 40
            a1, a2 = mel(Path(ex["audio1"]).stem), mel(Path(ex["audio2"]).stem)
            before = model.prefix(a1, a2, ids, mask, cross=False)
            prefix = model.prefix(a1, a2, ids, mask)
            assert prefix.shape == (1, 121, 8)
            assert (before[0] - EXPECTED[f"{key}.prefix_pre_cross"]).abs().max() < 1e-5
            assert (prefix[0] - EXPECTED[f"{key}.prefix"]).abs().max() < 1e-5
            logits = model.lm(inputs_embeds=prefix).logits[0, -1]
            assert (logits - EXPECTED[f"{key}.first_logits"]).abs().max() < 1e-5
            greedy = model.generate(a1, a2, ids, mask, max_new_tokens=30, stop_id=220)[0]
            assert greedy.tolist() == EXPECTED[f"{key}.greedy_ids"].tolist()


def test_python_api_mirrors_the_wrapper(imported):
    from audiopair import explain

    model = explain.load(imported)
    triples = [[str(FIXTURE / e["audio1"]), str(FIXTURE / e["audio2"]), e["prompt"]] for e in EXAMPLES]
    assert model.generate(triples, max_len=30) == [TEXTS[e["id"]] for e in EXAMPLES]
    with pytest.raises(ValueError, match="example 0"):
        model.generate([["only-one.wav"]])


TIER_EXAMPLES = [e for e in EXAMPLES if "caption" not in e["prompt"]]  # the three tier prompts


def adiff_csv_overrides(tmp_path: Path, splits=("test",)) -> list[str]:
    """Config overrides for a dataset of the fixture's tier examples as an ADIFF-style CSV per split, with the
    reference's front end (32 kHz, Slaney mels to 14 kHz), evaluated as the wrapper decodes."""
    sources = []
    for split in splits:
        path = tmp_path / f"{split}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["taskname", "filepath1", "filepath2", "caption1", "caption2", "input", "answer"])
            for e in TIER_EXAMPLES:
                w.writerow(["audiocaps", e["audio1"], e["audio2"], "a sound", "another sound", e["prompt"],
                            "the second sound is louder"])
        sources.append(f"{{kind: adiff_csv, name: {split}, csv: '{path}', audio_dir: '{FIXTURE}', split: {split}}}")
    return [
        f"work_dir={tmp_path / 'work'}", f"dataset.output_dir={tmp_path / 'ds'}", "dataset.sample_rate=32000",
        "dataset.clip_seconds=10", "dataset.features.n_fft=1024", "dataset.features.hop_length=320",
        "dataset.features.f_max=14000", "dataset.features.mel_scale=slaney", "dataset.features.mel_norm=slaney",
        "dataset.features.dtype=float32", f"dataset.sources=[{', '.join(sources)}]", "dataset.num_workers=1",
        "experiment=reference", "evaluate.limit=null", "evaluate.classify=[]",
        "evaluate.decoding={strategy: reference, max_new_tokens: 30}", "evaluate.metrics=[bleu_1]",
    ]


def run_job(name: str, argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job.main(argv)


def test_evaluate_job_on_an_adiff_csv_dataset(imported, tmp_path):
    """jobs/evaluate.py scores the imported folder on a dataset built from an ADIFF-style CSV, decoding as the
    wrapper does: the predictions are the reference's texts."""
    import mlflow

    from audiopair.config import load_config
    from audiopair.data.pipeline import build_dataset

    rows = TIER_EXAMPLES
    overrides = adiff_csv_overrides(tmp_path)
    dcfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", overrides).dataset
    build_dataset(dcfg, executor="serial", progress=lambda m: None)
    first = json.loads((Path(dcfg.output_dir) / "manifests" / "adiff_test.jsonl").read_text().splitlines()[0])["id"]
    assert run_job("evaluate", overrides + [f"evaluate.checkpoints={{adiff_base: {imported}}}",
                                            f"evaluate.draw=['{first}']"]) == 0
    # the hallucination view at real scale: the token-semantic head's 527 classes, numbered without a label CSV
    (figure,) = (tmp_path / "work" / "figures" / "adiff_base").glob("*.png")
    assert figure.stat().st_size > 10_000
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reference")
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "adiff_base/evaluate"]
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=child.info.run_id,
                                                                artifact_path="predictions/test.json",
                                                                tracking_uri=client._tracking_client.tracking_uri))
                       .read_text())
    got = {row[table["columns"].index("prompt")]: row[table["columns"].index("prediction")] for row in table["data"]}
    assert got == {e["prompt"]: TEXTS[e["id"]] for e in rows}  # as the wrapper returns them


def test_dataset_with_other_log_mels_is_refused(imported, tiny_dataset):
    from audiopair.evaluate.generate import Generator

    dcfg, _ = tiny_dataset  # 16 kHz, HTK filters: not what the model heard
    with pytest.raises(ValueError, match="other log-mels.*sample_rate: 32000 vs 16000"):
        Generator(imported, dcfg.dataset.output_dir)


def test_full_size_layout_imports_with_the_reference_parameter_count():
    """keys_base.tsv (every key of the released full-size model) imports on the meta device; the summary per module
    equals the reference's 296,265,943 parameters, less the 1,083,456 of the front end audiopair computes outside
    the model."""
    from audiopair.models.reference import build, plan_import, read_reference_config

    state = {}
    for line in (FIXTURE / "keys_base.tsv").read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, dtype, kind = line.split("\t")
        if not kind.startswith("tied"):
            state[key] = torch.empty(json.loads(shape), dtype=getattr(torch, dtype), device="meta")
    ref = read_reference_config()  # text_decoder "gpt2": the head count is GPT-2 base's 12
    cfg, lm_config, tensors = plan_import(state, ref)
    assert (cfg.mapper_layers, cfg.mapper_heads, cfg.cross_layers, cfg.cross_heads, cfg.d_proj) == (4, 8, 4, 4, 1024)
    assert (cfg.prefix_len, cfg.prompt_len, cfg.encoder.depths, cfg.encoder.embed_dim) == (40, 40, [2, 2, 6, 2], 96)
    model = build(cfg, lm_config, tensors, 50256, 0, device="meta")
    per_module = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()
                  if part is not None}
    assert per_module == {"encoder": 30_241_687, "audio_projection": 1_837_056, "audio_mapper1": 50_417_664,
                          "audio_mapper2": 50_417_664, "text_mapper": 18_929_664, "cross_projection": 18_898_944,
                          "lm": 124_439_808}
    assert sum(per_module.values()) + 2 * 513 * 1024 + 513 * 64 == 296_265_943


def test_a_fresh_paper_size_model_has_the_reference_layout():
    """Built from the defaults (no checkpoint), adiff at paper size is the same network: same per-module sizes."""
    from audiopair.config import AdiffModelConfig
    from audiopair.models.adiff import AdiffModel

    with torch.device("meta"):
        model = AdiffModel(AdiffModelConfig(encoder={"pretrained": None}, lm_pretrained=None), 50257, 50256, 50256,
                           pad_id=0)
    sizes = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    assert sizes["audio_mapper1"] == sizes["audio_mapper2"] == 50_417_664
    assert (sizes["audio_projection"], sizes["text_mapper"], sizes["cross_projection"]) == \
        (1_837_056, 18_929_664, 18_898_944)


def _state_without(key_part: str) -> dict:
    return {k: v for k, v in read_state(FIXTURE / "checkpoint.pth").items() if key_part not in k}


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    from audiopair.models.reference import import_adiff

    ref = FIXTURE / "reference_config.yaml"
    torch.save(_state_without("text_project.prefix_const"), tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="text_mapper.prefix_const"):
        import_adiff(tmp_path / "missing.pth", tmp_path / "out1", ref, say=lambda m: None)
    state = read_state(FIXTURE / "checkpoint.pth")
    state["caption_decoder.cross_project.layers.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"cross_projection.layers.0.mlp.fc1.weight: shape \(3, 3\)"):
        import_adiff(tmp_path / "shape.pth", tmp_path / "out2", ref, say=lambda m: None)
    state = read_state(FIXTURE / "checkpoint.pth")
    state["caption_decoder.extra_head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="caption_decoder.extra_head.weight"):
        import_adiff(tmp_path / "extra.pth", tmp_path / "out3", ref, say=lambda m: None)

    class Boom:  # a pickle that would run code when loaded
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"weights": Boom()}, f)
    with pytest.raises(CheckpointError, match="would run pickled code"):
        import_adiff(tmp_path / "evil.pth", tmp_path / "out4", ref, say=lambda m: None)
    assert not any((tmp_path / f"out{i}").exists() for i in range(1, 5))  # nothing half-written


def test_htsat_converter_round_trips_every_layout(tmp_path):
    """The reference layout -> ClapAudioModel -> back is exact; HTS-AT's Lightning form (sed_model. under
    state_dict) and a DataParallel save (module.) read the same."""
    from audiopair.models.encoder import AudioEncoder

    state = read_state(FIXTURE / "checkpoint.pth")
    htsat, _ = split_htsat(state)
    backbone, head, front = to_clap(htsat)
    assert set(front) == {"spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                          "logmel_extractor.melW"}
    back = from_clap(backbone, head)
    assert {k for k in htsat if not k.endswith("attn_mask") and k not in front} == set(back)
    assert all(torch.equal(back[k], htsat[k]) for k in back)

    torch.save({"state_dict": {f"sed_model.{k}": v for k, v in htsat.items()}, "epoch": 3}, tmp_path / "htsat.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    assert set(split_htsat(read_state(tmp_path / "dp.pth"))[0]) == set(htsat)
    enc = AudioEncoder.from_htsat_checkpoint(tmp_path / "htsat.ckpt").eval()
    with torch.no_grad():
        out = enc(mel("tone_chord"))
    assert out.frame_logits.shape == (1, 32, 527) and out.clip_logits.shape == (1, 527)
    assert (out.embedding[0] - EXPECTED["clip.tone_chord.embedding"]).abs().max() < 1e-5
    assert not any(p.requires_grad for p in enc.event_head.head.parameters())  # HTSAT's unused head never trains
    enc.event_head.requires_grad_(True)
    assert enc.event_head.conv.weight.requires_grad and not enc.event_head.head.weight.requires_grad

    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},/m/{i},"Class {i}, loud"\n' for i in range(527)))
    assert read_class_labels(labels)[:2] == ["Class 0, loud", "Class 1, loud"]
    enc.set_class_labels(read_class_labels(labels))
    with pytest.raises(ValueError, match="3 class labels for an event head of 527"):
        enc.set_class_labels(["a", "b", "c"])


def test_import_names_the_event_classes_from_audioset_csv(tmp_path):
    from audiopair.models.adiff import load_checkpoint
    from audiopair.models.reference import import_adiff

    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},Sound {i}\n" for i in range(527)))
    folder = import_adiff(FIXTURE / "checkpoint.pth", tmp_path / "model", FIXTURE / "reference_config.yaml", labels,
                          say=lambda m: None)
    assert load_checkpoint(folder).event_labels[526] == "Sound 526"
    labels.write_text("index,mid,display_name\n0,/m/0,Speech\n")
    with pytest.raises(CheckpointError, match="1 classes, the event head has 527"):
        import_adiff(FIXTURE / "checkpoint.pth", tmp_path / "other", FIXTURE / "reference_config.yaml", labels,
                     say=lambda m: None)


def test_finetuning_starts_from_an_imported_folder(imported, tmp_path):
    """Stage 3 from the released weights (train.init_from): the job takes the folder's architecture, tokenizer and
    front end, trains on Ray Train + DeepSpeed, and saves a folder that still records the reference front end."""
    import mlflow

    from audiopair.models.adiff import load_checkpoint

    argv = adiff_csv_overrides(tmp_path, ("train", "val", "test")) + [
        f"train.init_from={imported}", "train.unimodal.enabled=false", "train.variants=[adiff]", "train.parallel=1",
        "train.num_workers=1", f"train.storage_path={tmp_path / 'runs'}", "train.run_name=from-release",
        "train.task_weights={adiff: 1.0}", "train.micro_batch=3", "train.max_answer_tokens=16",
        "train.stages=[{name: finetune, epochs: 2, lr: 0.01, warmup_steps: 0}]",
        "evaluate.decoding={strategy: reference, max_new_tokens: 4}"]
    assert run_job("train_adiff", argv) == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reference")
    (stage,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "adiff-finetune"]
    losses = [m.value for m in client.get_metric_history(stage.info.run_id, "train_loss")]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns the new answers
    tuned = load_checkpoint(Path(stage.data.tags["checkpoint"]) / "model")
    start = load_checkpoint(imported)
    assert tuned.cfg.d_proj == start.cfg.d_proj and tuned.front_end == start.front_end
    assert not torch.equal(tuned.lm.transformer.h[0].mlp.c_fc.weight, start.lm.transformer.h[0].mlp.c_fc.weight)
    assert torch.equal(tuned.encoder.backbone.audio_encoder.norm.weight, start.encoder.backbone.audio_encoder.norm.weight)


def test_embedding_cache_key_follows_the_front_end():
    from audiopair.data.features import front_end
    from audiopair.models.encoder import AudioEncoder
    from audiopair.train.embeddings import fingerprint

    enc = AudioEncoder.from_htsat_checkpoint(FIXTURE / "checkpoint.pth")
    slaney = front_end(FeatureConfig(), 32000)
    htk = front_end(FeatureConfig(mel_scale="htk", mel_norm=None), 32000)
    assert fingerprint(enc, slaney) == fingerprint(enc, dict(slaney))
    assert len({fingerprint(enc, slaney), fingerprint(enc, htk), fingerprint(enc, {**slaney, "f_max": 8000.0}),
                fingerprint(enc)}) == 4
