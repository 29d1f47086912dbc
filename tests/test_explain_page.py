"""The explain page's API on a tiny random ADIFF checkpoint: an explanation and a hallucination view from two
uploaded WAVs, through the evaluation's own generator; upload limits and broken files give clear errors."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from audiopair.audio import write_audio
from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def wav(path, seconds=1.0, freq=440.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    write_audio(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    from fastapi.testclient import TestClient

    from audiopair.serve.explain_app import create_explain_app

    tmp = tmp_path_factory.mktemp("explain")
    examples = tmp / "examples"
    wav(examples / "tone.wav", 1.0, 440.0)
    wav(examples / "low.wav", 1.0, 110.0)
    (tmp / "secret.wav").write_bytes(b"RIFF")
    cfg = tiny_config(tmp / "unused", "evaluate.decoding.max_new_tokens=6", f"serve.examples={examples}",
                      "serve.max_seconds=3", "serve.max_upload_mb=0.2")
    return TestClient(create_explain_app({"tiny": tiny_checkpoint}, cfg)), tmp


def post(client, files=None, **form):
    data = {"checkpoint": "tiny", "prompt": "Explain the difference in one sentence.", **form}
    return client.post("/api/explain", data=data, files=files or {})


def test_two_uploads_give_an_explanation_and_a_hallucination_view(client, tiny_checkpoint):
    from audiopair.evaluate.generate import FileGenerator

    c, tmp = client
    a, b = wav(tmp / "a.wav", 1.0, 300.0), wav(tmp / "b.wav", 2.0, 2000.0)
    r = post(c, {"audio1": ("a.wav", a.read_bytes(), "audio/wav"), "audio2": ("b.wav", b.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    d = r.json()
    png = base64.b64decode(d["figure"].removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the same text the evaluation's generator gives for these files (one code path, not a copy)
    from audiopair.data.features import front_end

    cfg = tiny_config(tmp / "unused2", "evaluate.decoding.max_new_tokens=6")
    gen = FileGenerator(tiny_checkpoint, front_end(cfg.dataset.features, cfg.dataset.sample_rate),
                        cfg.evaluate.decoding)
    out = gen({"id": ["x"], "audio1": [str(a)], "audio2": [str(b)], "eval_prompt": [d["prompt"]]})
    assert d["explanation"] == out["prediction"][0] and not out["error"][0]
    # picking examples works as well; the page lists them and offers the three tier prompts
    r = post(c, example1="tone.wav", example2="low.wav")
    assert r.status_code == 200 and r.json()["figure"].startswith("data:image/png;base64,")
    assert c.get("/api/examples").json() == {"examples": ["low.wav", "tone.wav"]}
    html = c.get("/").text
    assert html.count("Tier ") == 3 and "<option>tiny</option>" in html and "at most 0.2 MB and 3 s each" in html


def test_limits_and_broken_files_give_clear_errors(client):
    c, tmp = client
    good = wav(tmp / "g.wav", 0.5).read_bytes()
    long = wav(tmp / "long.wav", 4.0, sr=8000).read_bytes()  # 64 KB: under the size limit, over 3 s
    big = wav(tmp / "big.wav", 2.0, sr=48000).read_bytes()  # 288 KB: over 0.2 MB
    cases = [
        ({"audio1": ("long.wav", long), "audio2": ("g.wav", good)}, {}, 413,
         "audio1: long.wav: 4.0 s is longer than the 3 s limit (serve.max_seconds)"),
        ({"audio1": ("g.wav", good), "audio2": ("big.wav", big)}, {}, 413,
         "audio2 (big.wav) is over the 0.2 MB upload limit (serve.max_upload_mb)"),
        ({"audio1": ("notes.wav", b"these are not audio samples" * 20), "audio2": ("g.wav", good)}, {}, 422,
         "audio1: notes.wav: unreadable audio: not decodable by libsndfile"),
        ({"audio1": ("g.wav", good), "audio2": ("cut.wav", good[:1000])}, {}, 422,
         "audio2: cut.wav: truncated: the data chunk is 23044 bytes shorter than its header says"),
        ({"audio1": ("empty.wav", b""), "audio2": ("g.wav", good)}, {}, 422,
         "audio1: empty.wav: file is empty (0 bytes)"),
        ({"audio1": ("g.wav", good)}, {}, 422, "audio2: upload a file or pick an example"),
        ({"audio1": ("g.wav", good)}, {"example2": "../secret.wav"}, 404, "no example '../secret.wav'"),
        ({"audio1": ("g.wav", good), "audio2": ("g.wav", good)}, {"checkpoint": "gpt"}, 422,
         "unknown checkpoint 'gpt'; choose one of ['tiny']"),
        ({"audio1": ("g.wav", good), "audio2": ("g.wav", good)}, {"prompt": "  "}, 422, "the prompt is empty"),
    ]
    for files, form, code, msg in cases:
        r = post(c, files, **form)
        assert r.status_code == code, (msg, r.text)
        assert r.json()["detail"].startswith(msg), r.json()["detail"]


def test_broken_file_message_is_the_build_s(tmp_path):
    """The page's reason for a cut-short file is the reason the dataset build records (AudioError.reason)."""
    from audiopair.audio import AudioError, read_audio

    p = tmp_path / "x.wav"
    p.write_bytes(b"these are not audio samples" * 20)
    with pytest.raises(AudioError) as e:
        read_audio(p)
    assert e.value.reason.startswith("unreadable audio: not decodable by libsndfile")


def test_serve_explain_job_names_checkpoints_and_refuses_other_folders(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    import importlib.util

    import uvicorn

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("serve_explain_job", REPO / "jobs" / "serve_explain.py")
    jobmod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jobmod)
    run = tmp_path / "runs" / "adiff-demo-adiff-finetune" / "epoch_0001" / "model"
    run.mkdir(parents=True)
    assert jobmod.checkpoint_name(run) == "adiff-demo-adiff-finetune"
    assert jobmod.split_argv([str(run), "serve.port=1", "--config", str(tmp_path)]) == (
        {"adiff-demo-adiff-finetune": run}, ["serve.port=1", "--config", str(tmp_path)])
    assert jobmod.split_argv(["models:/adiff/1", "runs:/abc/model"])[0] == {"models:/adiff/1": "models:/adiff/1",
                                                                           "runs:/abc/model": "runs:/abc/model"}
    assert jobmod.cli(["models:/nothing-here/1", f"work_dir={tmp_path / 'work'}"]) == 2
    assert "models:/nothing-here/1" in capsys.readouterr().err
    assert jobmod.cli([str(run)]) == 2
    assert "is neither an ADIFF model folder (adiff.json)" in capsys.readouterr().err
    assert jobmod.cli(["serve.port=1"]) == 2
    assert "name one or more checkpoint folders" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert jobmod.cli([str(tiny_checkpoint), "serve.port=8124"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 8124, "log_level": "warning"}


def test_batches_go_through_the_evaluation_generator(tiny_checkpoint, tmp_path):
    """Explainer.explain takes several pairs at once (one batch through FileGenerator, as jobs/evaluate.py
    batches) and gives each pair the text it gets alone; a broken file in a batch names it."""
    from audiopair.serve.explain_app import Explainer

    cfg = tiny_config(tmp_path / "unused", "evaluate.decoding.max_new_tokens=6")
    ex = Explainer(tiny_checkpoint, cfg)
    a, b, c = (str(wav(tmp_path / f"{n}.wav", 1.0, f)) for n, f in (("a", 200.0), ("b", 900.0), ("c", 3000.0)))
    prompts = ["Explain the difference in a few words.", "Explain the difference in detail."]
    both = ex.explain([(a, b), (b, c)], prompts)
    assert both == [ex.explain([(a, b)], prompts[:1])[0], ex.explain([(b, c)], prompts[1:])[0]]
    (tmp_path / "bad.wav").write_bytes(b"nope" * 100)
    with pytest.raises(ValueError, match="bad.wav: unreadable audio"):
        ex.explain([(a, str(tmp_path / "bad.wav"))], prompts[:1])
