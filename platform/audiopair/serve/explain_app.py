"""The explain page: two audios and a checkpoint in, the difference explanation (and ADIFF §6's hallucination
view) out. FastAPI, like the listening test: one HTML page, one JSON endpoint, upload limits as plain checks.

Generation is the evaluation's own code: an ADIFF folder runs through ``audiopair.evaluate.generate.FileGenerator``
(the model's recorded front end turns files into log-mels, then the same batched ``Generator.__call__`` that
``jobs/evaluate.py`` uses), a finetuned Qwen2-Audio folder through ``QwenGenerator``. The hallucination view is
``audiopair.evaluate.hallucination`` (``event_probabilities`` + ``hallucination_figure``), drawn as
``evaluate.draw`` draws it.

Routes:

- ``GET /``: the page (upload or record two audios, or pick two examples; a checkpoint; a tier prompt or free
  text). A recording is turned into a WAV in the browser and sent like an upload.
- ``POST /api/explain`` (multipart): ``checkpoint``, ``prompt``, ``audio1`` / ``audio2`` files or ``example1`` /
  ``example2`` names. 200 ``{explanation, figure, checkpoint, prompt}`` (``figure``: a PNG data URI or null);
  413 for a file over ``serve.max_upload_mb`` or ``serve.max_seconds``; 422 for an unreadable file, with the
  dataset build's reason (``<file name>: unreadable audio: ...``).
- ``GET /api/examples``, ``GET /examples/NAME``: the audio files of ``serve.examples`` (nothing else).
"""

from __future__ import annotations

import base64
import html
import tempfile
import threading
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse

from audiopair.audio import AudioError, read_audio
from audiopair.config import Config
from audiopair.tasks.prompts import canonical

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class Explainer:
    """One loaded checkpoint: ``explain(pairs, prompts)`` -> texts, ``figure(text, path1, path2, out)``."""

    def __init__(self, checkpoint: str | Path, cfg: Config):
        from audiopair.data.features import front_end
        from audiopair.evaluate.generate import FileGenerator, QwenGenerator, is_qwen
        from audiopair.evaluate.run import qwen_audio

        self.qwen = is_qwen(checkpoint)
        if self.qwen:
            self.gen = QwenGenerator(checkpoint, qwen_audio(cfg), cfg.evaluate.decoding)
        else:  # models saved before front ends were recorded take the config's
            self.gen = FileGenerator(checkpoint, front_end(cfg.dataset.features, cfg.dataset.sample_rate),
                                     cfg.evaluate.decoding)
        self.lock = threading.Lock()  # one generation at a time per model

    def explain(self, pairs: list[tuple[str, str]], prompts: list[str]) -> list[str]:
        """Explanations of ``pairs`` of audio files, as a batch through the generator evaluation uses; an example
        that fails raises ``AudioError``/``ValueError`` with the generator's message."""
        batch = {"id": [f"request{i}" for i in range(len(pairs))], "audio1": [a for a, _ in pairs],
                 "audio2": [b for _, b in pairs], "eval_prompt": list(prompts)}
        with self.lock:
            out = self.gen(batch)
        bad = [e for e in out["error"] if e]
        if bad:
            raise ValueError(bad[0])
        return list(out["prediction"])

    def figure(self, text: str, path1: str, path2: str, out: Path) -> Path | None:
        """ADIFF's hallucination view of one pair (None for Qwen2-Audio: no frozen event encoder)."""
        if self.qwen:
            return None
        from audiopair.evaluate.hallucination import event_probabilities, hallucination_figure

        model = self.gen.model
        labels = model.event_labels or [f"class {i}" for i in range(model.encoder.event_head.num_classes)]
        with self.lock:
            mels = [self.gen.mel(p).numpy() for p in (path1, path2)]
            probs = [event_probabilities(model.encoder, m) for m in mels]
        return Path(hallucination_figure(text, *mels, *probs, labels, out, self.gen.sample_rate,
                                         self.gen.features.hop_length))


def create_explain_app(checkpoints: dict[str, str | Path], cfg: Config) -> FastAPI:
    """The page over ``checkpoints`` (name -> ADIFF or Qwen2-Audio model folder), loaded on first use."""
    if not checkpoints:
        raise ValueError("no checkpoints: name at least one model folder")
    s = cfg.serve
    examples = Path(s.examples).resolve() if s.examples else None
    loaded: dict[str, Explainer] = {}
    loading = threading.Lock()
    app = FastAPI(title="audiopair explain", docs_url=None, redoc_url=None, openapi_url=None)
    prompts = {f"Tier {t}": canonical("adiff", t) for t in (1, 2, 3)}

    def explainer(name: str) -> Explainer:
        if name not in checkpoints:
            raise HTTPException(422, f"unknown checkpoint {name!r}; choose one of {sorted(checkpoints)}")
        with loading:
            if name not in loaded:
                loaded[name] = Explainer(checkpoints[name], cfg)
            return loaded[name]

    def example_files() -> list[str]:
        if examples is None:
            return []
        return sorted(p.relative_to(examples).as_posix() for p in examples.rglob("*")
                      if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())

    def example_path(name: str) -> Path:
        if name not in example_files():  # only listed files: no traversal out of the folder
            raise HTTPException(404, f"no example {name!r}")
        return examples / name

    async def save_upload(field: str, up: UploadFile, folder: Path) -> Path:
        limit = int(s.max_upload_mb * 2**20)
        data = await up.read(limit + 1)
        label = f"{field} ({up.filename})"
        if len(data) > limit:
            raise HTTPException(413, f"{label} is over the {s.max_upload_mb:g} MB upload limit (serve.max_upload_mb)")
        name = Path(up.filename or field).name
        path = folder / field / (name if Path(name).suffix else name + ".wav")
        path.parent.mkdir()
        path.write_bytes(data)
        return path

    def check_audio(field: str, path: Path, shown: str) -> None:
        try:
            x, sr = read_audio(path)
        except AudioError as e:  # the build's reason, naming the file the user knows
            raise HTTPException(422, f"{field}: {shown}: {e.reason}") from None
        seconds = x.shape[1] / sr
        if seconds > s.max_seconds:
            raise HTTPException(413, f"{field}: {shown}: {seconds:.1f} s is longer than the {s.max_seconds:g} s "
                                     "limit (serve.max_seconds)")

    @app.get("/", response_class=HTMLResponse)
    def page():
        opts = "".join(f"<option>{html.escape(n)}</option>" for n in checkpoints)
        popts = "".join(f'<option value="{html.escape(p)}">{html.escape(k)}: {html.escape(p)}</option>'
                        for k, p in prompts.items())
        return (PAGE.replace("__CHECKPOINTS__", opts).replace("__PROMPTS__", popts)
                .replace("__LIMITS__", f"at most {s.max_upload_mb:g} MB and {s.max_seconds:g} s each"))

    @app.get("/api/examples")
    def list_examples():
        return {"examples": example_files()}

    @app.get("/examples/{name:path}")
    def example(name: str):
        return FileResponse(example_path(name))

    @app.post("/api/explain")
    async def explain(checkpoint: str = Form(...), prompt: str = Form(...), audio1: UploadFile | None = None,
                      audio2: UploadFile | None = None, example1: str = Form(""), example2: str = Form("")):
        prompt = prompt.strip()
        if not prompt:
            raise HTTPException(422, "the prompt is empty: choose a tier or write a question")
        with tempfile.TemporaryDirectory(prefix="explain-") as tmp:
            paths = []
            for field, up, ex in (("audio1", audio1, example1), ("audio2", audio2, example2)):
                if up is not None and up.filename:
                    p = await save_upload(field, up, Path(tmp))
                    check_audio(field, p, Path(up.filename).name)
                elif ex:
                    p = example_path(ex)
                    check_audio(field, p, ex)
                else:
                    raise HTTPException(422, f"{field}: upload a file or pick an example")
                paths.append(str(p))
            ex = explainer(checkpoint)
            try:
                text = ex.explain([(paths[0], paths[1])], [prompt])[0]
            except (AudioError, ValueError) as e:
                raise HTTPException(422, str(e).replace(tmp + "/", "")) from None
            fig = ex.figure(text, paths[0], paths[1], Path(tmp) / "view.png")
            uri = None if fig is None else "data:image/png;base64," + base64.b64encode(fig.read_bytes()).decode()
        return {"explanation": text, "figure": uri, "checkpoint": checkpoint, "prompt": prompt}

    return app


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>audiopair: explain the difference</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:1000px;margin:1em auto;padding:0 1em;color:#222}
 fieldset{margin:.6em 0;border:1px solid #ccc;border-radius:6px} label{margin-right:1em}
 #explanation{font-size:1.1em;background:#f4f6f8;padding:.8em;border-radius:6px;min-height:1.5em}
 #error{color:#b00020;white-space:pre-wrap} img{max-width:100%;margin-top:1em} textarea{width:100%}
</style></head><body>
<h1>Explain the difference between two audios</h1>
<form id="form">
<fieldset><legend>Audio 1</legend><input type="file" name="audio1" id="audio1" accept="audio/*">
 <button type="button" class="rec" data-for="audio1" id="rec1">Record</button>
 or example <select name="example1" id="example1" class="examples"><option value=""></option></select></fieldset>
<fieldset><legend>Audio 2</legend><input type="file" name="audio2" id="audio2" accept="audio/*">
 <button type="button" class="rec" data-for="audio2" id="rec2">Record</button>
 or example <select name="example2" id="example2" class="examples"><option value=""></option></select></fieldset>
<p><small>WAV, FLAC, OGG or MP3, __LIMITS__.</small></p>
<fieldset><legend>Model and question</legend>
<label>Checkpoint <select name="checkpoint" id="checkpoint">__CHECKPOINTS__</select></label><br>
<label>Prompt <select id="prompt-choice">__PROMPTS__<option value="">Free text…</option></select></label>
<textarea id="free" rows="2" placeholder="Your own question about the two audios" hidden></textarea>
</fieldset>
<button type="submit" id="go">Explain</button> <span id="busy"></span>
</form>
<h2>Explanation</h2><div id="explanation"></div><div id="error"></div>
<img id="figure" alt="hallucination view: log-mels and top event probabilities of both audios" hidden>
<script>
const $ = (id) => document.getElementById(id);
$("prompt-choice").onchange = () => { $("free").hidden = $("prompt-choice").value !== ""; };
fetch("/api/examples").then(r => r.json()).then(d => {
  for (const sel of document.querySelectorAll(".examples"))
    for (const e of d.examples) { const o = document.createElement("option"); o.textContent = e; sel.appendChild(o); }
});
// Recording: the browser's MediaRecorder gives WebM/Opus, which libsndfile cannot read, so the page decodes it
// (Web Audio) and hands the server a 16-bit mono WAV through the same file input an upload uses.
function wavBlob(buf) {
  const x = buf.getChannelData(0), n = x.length, sr = buf.sampleRate, v = new DataView(new ArrayBuffer(44 + 2 * n));
  const str = (o, t) => { for (let i = 0; i < t.length; i++) v.setUint8(o + i, t.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); str(8, "WAVEfmt "); v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, sr, true); v.setUint32(28, 2 * sr, true);
  v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) v.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x[i])) * 32767, true);
  return new Blob([v], {type: "audio/wav"});
}
for (const btn of document.querySelectorAll(".rec")) {
  let rec = null, chunks = [];
  btn.onclick = async () => {
    if (rec) { rec.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({audio: true});
      rec = new MediaRecorder(stream); chunks = [];
      rec.ondataavailable = (e) => chunks.push(e.data);
      rec.onstop = async () => {
        stream.getTracks().forEach(t => t.stop()); rec = null; btn.textContent = "Record";
        const ctx = new AudioContext();
        const buf = await ctx.decodeAudioData(await new Blob(chunks).arrayBuffer());
        const dt = new DataTransfer();
        dt.items.add(new File([wavBlob(buf)], `${btn.dataset.for}-recording.wav`, {type: "audio/wav"}));
        $(btn.dataset.for).files = dt.files;
        btn.dataset.done = "1";
      };
      rec.start(); btn.textContent = "Stop"; delete btn.dataset.done;
    } catch (e) { $("error").textContent = "recording failed: " + e.message; }
  };
}
$("form").onsubmit = async (ev) => {
  ev.preventDefault();
  const fd = new FormData($("form"));
  fd.set("prompt", $("prompt-choice").value || $("free").value);
  $("busy").textContent = "generating…"; $("error").textContent = ""; $("explanation").textContent = "";
  $("figure").hidden = true;
  try {
    const r = await fetch("/api/explain", {method: "POST", body: fd});
    const d = await r.json();
    if (!r.ok) throw new Error(typeof d.detail === "string" ? d.detail : JSON.stringify(d.detail));
    $("explanation").textContent = d.explanation || "(empty explanation)";
    if (d.figure) { $("figure").src = d.figure; $("figure").hidden = false; }
  } catch (e) { $("error").textContent = e.message; }
  $("busy").textContent = "";
};
</script></body></html>
"""
