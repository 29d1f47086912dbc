"""The listening-test server (FastAPI): one page per rater link, a small JSON API behind it.

FastAPI rather than Gradio: the page is plain HTTP (two ``<audio>`` elements, radio buttons, ``fetch`` calls), and
what matters is who may read and write what: per-rater tokens, 403s, a path check on audio, one database
transaction per change. Those are ordinary routes here; in Gradio they would be worked around its session model.

Routes (``TOKEN`` is a rater's token from ``raters.json``; an unknown token gets 403 everywhere):

- ``GET /rate/TOKEN``: the page (instructions, progress, both audios, the blind outputs with three 1-5 ratings).
- ``GET /api/TOKEN/state``: the items (no model names), this rater's own ratings, comments and position.
- ``PUT /api/TOKEN/rating`` ``{item, output, dimension, score}``: score 1-5 (422 outside), saved at once.
- ``PUT /api/TOKEN/comment`` ``{item, text}``; ``PUT /api/TOKEN/position`` ``{position}``.
- ``POST /api/TOKEN/finish``: 409 naming the unrated items until every output has all three ratings.
- ``GET /audio/TOKEN/PATH``: a study audio file; only the files the study lists (404 otherwise).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from pydantic import BaseModel, Field

from audiopair.serve.study import DIMENSION_NAMES, DIMENSIONS, Study, load_study
from audiopair.serve.store import RatingStore, default_url


class RatingIn(BaseModel):
    item: str
    output: str
    dimension: str
    score: int = Field(ge=1, le=5)


class CommentIn(BaseModel):
    item: str
    text: str = Field(max_length=5000)


class PositionIn(BaseModel):
    position: int = Field(ge=0)


def create_app(study_dir: str | Path, database: str | None = None) -> FastAPI:
    """The app for the study frozen in ``study_dir``; ratings in ``database`` (a SQLAlchemy URL; default SQLite
    ``<study_dir>/ratings.db``)."""
    study = load_study(study_dir)
    store = RatingStore(database or default_url(study_dir), study.fingerprint)
    app = FastAPI(title=f"listening test {study.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.store = study, store

    def rater_of(token: str) -> str:
        found = None
        for name, t in study.raters.items():  # compare with every token, in constant time each
            if secrets.compare_digest(t.encode(), token.encode()):
                found = name
        if found is None:
            raise HTTPException(403, "unknown rater link")
        return found

    def check_output(item: str, output: str | None = None) -> dict:
        it = study.item(item)
        if it is None:
            raise HTTPException(404, f"no item {item!r} in this study")
        if output is not None and output not in {o["key"] for o in it["outputs"]}:
            raise HTTPException(404, f"item {item} has no output {output!r}")
        return it

    @app.get("/", response_class=PlainTextResponse)
    def root():
        return "Listening test: open the link you were given (/rate/<your token>)."

    @app.get("/rate/{token}", response_class=HTMLResponse)
    def page(token: str):
        rater_of(token)
        return PAGE.replace("__TITLE__", study.name)

    @app.get("/api/{token}/state")
    def state(token: str):
        rater = rater_of(token)
        position, finished = store.progress(rater)
        items = [{"id": it["id"], "prompt": it["prompt"], "audio": [f"/audio/{token}/{a}" for a in it["audio"]],
                  "outputs": [{"key": o["key"], "text": o["text"]} for o in it["outputs"]]} for it in study.items]
        ratings: dict = {}
        for r in store.ratings(rater):
            ratings.setdefault(r["item"], {}).setdefault(r["output"], {})[r["dimension"]] = r["score"]
        return {"rater": rater, "items": items, "ratings": ratings, "comments": store.comments(rater),
                "position": min(position, len(items) - 1), "finished": finished is not None,
                "dimensions": [{"key": d, "name": DIMENSION_NAMES[d]} for d in DIMENSIONS]}

    @app.put("/api/{token}/rating")
    def rate(token: str, body: RatingIn):
        rater = rater_of(token)
        check_output(body.item, body.output)
        if body.dimension not in DIMENSIONS:
            raise HTTPException(422, f"dimension must be one of {list(DIMENSIONS)}, got {body.dimension!r}")
        store.rate(rater, body.item, body.output, body.dimension, body.score)
        return {"saved": True}

    @app.put("/api/{token}/comment")
    def comment(token: str, body: CommentIn):
        rater = rater_of(token)
        check_output(body.item)
        store.comment(rater, body.item, body.text)
        return {"saved": True}

    @app.put("/api/{token}/position")
    def move(token: str, body: PositionIn):
        rater = rater_of(token)
        if body.position >= len(study.items):
            raise HTTPException(422, f"position {body.position} is past the last item ({len(study.items) - 1})")
        store.move(rater, body.position)
        return {"saved": True}

    @app.post("/api/{token}/finish")
    def finish(token: str):
        rater = rater_of(token)
        done = {(r["item"], r["output"], r["dimension"]) for r in store.ratings(rater)}
        missing = [it["id"] for it in study.items
                   if any((it["id"], o["key"], d) not in done for o in it["outputs"] for d in DIMENSIONS)]
        if missing:
            raise HTTPException(409, f"{len(missing)} items are not fully rated yet: {', '.join(missing[:10])}")
        store.finish(rater)
        return {"finished": True}

    @app.get("/audio/{token}/{path:path}")
    def audio(token: str, path: str):
        rater_of(token)
        return FileResponse(_study_file(study, path))

    return app


def _study_file(study: Study, path: str) -> Path:
    """``path`` inside the study folder and listed by the study, else 404 (no traversal, no other files)."""
    root = study.folder.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or target.relative_to(root).as_posix() not in study.audio_files \
            or not target.is_file():
        raise HTTPException(404, "no such audio in this study")
    return target


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Listening test: __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:980px;margin:1em auto;padding:0 1em;color:#222}
 details{background:#f4f6f8;padding:.6em 1em;border-radius:6px} .audios{display:flex;gap:2em;margin:1em 0}
 .output{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.8em 0}
 .text{font-size:1.05em;margin:.3em 0 .6em}
 .dim{display:inline-block;margin-right:1.5em} .dim label{margin-right:.3em} #status{color:#666;margin-left:1em}
 textarea{width:100%;height:3.5em} nav{margin:1em 0} button{padding:.4em 1.2em;margin-right:.5em}
 .prompt{color:#555;font-style:italic}
</style></head><body>
<h1>Listening test</h1>
<details id="instructions" open><summary><b>Instructions</b> (click to fold)</summary>
<p>Use headphones. For each item, first play <b>both</b> audios, as often as you like, and work out how they
differ: which sound events occur in each, the scene or setting, signal qualities such as loudness, pitch,
brightness and timbre, and the mood a listener would feel. Then read each explanation of the difference. The
explanations come from different systems, shown in a random order and without names; judge each on its own.</p>
<p>Give each explanation three scores from 1 (worst) to 5 (best):</p>
<ul>
<li><b>Correctness</b>: is what it says about the two audios true? 1: mostly wrong about the events, scenes or
signal; 2: several errors, a few things right; 3: a mix of right and wrong; 4: right apart from small slips;
5: entirely right, nothing relevant misidentified.</li>
<li><b>Granularity</b>: how detailed and specific is it? 1: very vague; 2: some detail, mostly broad;
3: covers the main points, misses finer ones; 4: detailed, specific about most aspects; 5: thorough and precise
about everything relevant.</li>
<li><b>Readability</b>: how easy is it to read? 1: very hard, poorly structured; 2: hard in places; 3: readable
with some problems; 4: clear with small problems; 5: very clear and well structured.</li>
</ul>
<p>Every choice is saved as you make it. You may go back, change scores, close the page and come back later
through the same link.</p></details>
<nav><span id="progress"></span><span id="status"></span></nav>
<div id="item"></div>
<nav><button id="back">&larr; Back</button><button id="next">Next &rarr;</button>
<button id="finish">Finish</button><span id="done"></span></nav>
<script>
const token = location.pathname.split("/").pop();
let S = null, pos = 0;
const $ = (id) => document.getElementById(id);
function esc(t){const d=document.createElement("div");d.textContent=t;return d.innerHTML;}
async function api(method, path, body){
  const r = await fetch(`/api/${token}/${path}`, {method, headers:{"Content-Type":"application/json"},
                        body: body===undefined?undefined:JSON.stringify(body)});
  if(!r.ok){ const e = await r.json().catch(()=>({detail:r.statusText})); throw new Error(e.detail); }
  return r.json();
}
function status(t){ $("status").textContent = t; }
function show(){
  const it = S.items[pos], mine = S.ratings[it.id] || {};
  $("progress").textContent = `Item ${pos+1} of ${S.items.length}`;
  let h = `<p class="prompt">Question asked: ${esc(it.prompt)}</p><div class="audios">` +
    it.audio.map((a,i)=>`<div>Audio ${i+1}<br><audio controls preload="metadata" src="${a}"></audio></div>`).join("") + `</div>`;
  for(const o of it.outputs){
    h += `<div class="output" data-output="${o.key}"><b>Explanation ${o.key}</b><div class="text">${esc(o.text)}</div>`;
    for(const d of S.dimensions){
      const cur = (mine[o.key]||{})[d.key];
      h += `<span class="dim"><b>${d.name}</b> `;
      for(let v=1; v<=5; v++){
        const id = `r-${o.key}-${d.key}-${v}`;
        h += `<input type="radio" id="${id}" name="${o.key}-${d.key}" value="${v}" ${cur===v?"checked":""}
               data-output="${o.key}" data-dim="${d.key}"><label for="${id}">${v}</label>`;
      }
      h += `</span>`;
    }
    h += `</div>`;
  }
  h += `<p>Comment (optional)<br><textarea id="comment">${esc(S.comments[it.id]||"")}</textarea></p>`;
  $("item").innerHTML = h;
  $("back").disabled = pos === 0; $("next").disabled = pos === S.items.length - 1;
  document.querySelectorAll("input[type=radio]").forEach(el => el.addEventListener("change", async () => {
    const score = +el.value, out = el.dataset.output, dim = el.dataset.dim;
    status("saving…");
    try { await api("PUT", "rating", {item: it.id, output: out, dimension: dim, score});
          ((S.ratings[it.id] ||= {})[out] ||= {})[dim] = score; status("saved"); }
    catch(e){ status("not saved: " + e.message); }
  }));
  let timer = null;
  $("comment").addEventListener("input", (ev) => { clearTimeout(timer); status("typing…");
    timer = setTimeout(async () => { try { await api("PUT", "comment", {item: it.id, text: ev.target.value});
      S.comments[it.id] = ev.target.value; status("saved"); } catch(e){ status("not saved: " + e.message); } }, 400); });
}
async function go(p){ pos = p; show(); try { await api("PUT", "position", {position: pos}); } catch(e){ status(e.message); } }
$("back").onclick = () => go(pos - 1);
$("next").onclick = () => go(pos + 1);
$("finish").onclick = async () => {
  try { await api("POST", "finish"); $("done").textContent = "Thank you: all ratings are in."; }
  catch(e){ $("done").textContent = e.message; }
};
(async () => { S = await api("GET", "state"); pos = S.position; show();
  if(S.finished) $("done").textContent = "You have finished; you may still change scores."; })();
</script></body></html>
"""
