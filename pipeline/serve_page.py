"""What textclf-serve shows and accepts: the request and response schemas (OpenAPI), and the page at `/`.

The page is one HTML document with its style and script inline: it loads nothing from anywhere, so it
works offline, and its Content-Security-Policy allows exactly that script and that style (by SHA-256)
and requests to the server itself, nothing else. Texts go in a box (one per line, or the whole box as one
text); each result shows the label, a bar per class, and the words the model read, shaded by their
attribution toward the label (orange toward, blue against) and underlined by the attention weight when
the model pools by attention. A link may carry texts in its fragment, `/#text=...&text=...`: the page
classifies them when it opens (the fragment never reaches the server's logs). A "min confidence" field sends
the request's `min_confidence` (empty: the server's default; the fragment's `min_confidence=P` fills it).

A multi-label model's answer is a set of labels (LabelSetPrediction): the page shows each label given (or
"(no label)"), a bar per label with its own probability and threshold (a given label's name in bold), and
the words shaded for each label given, one row of words per label.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json

from typing import Union

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """Exactly one of `text` or `texts`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, description="one text to classify")
    texts: list[str] | None = Field(None, description="texts to classify, in order (a batch)")
    explain: bool = Field(False, description="add per-token attributions (integrated gradients), and attention "
                                             "weights when the model pools by attention")
    min_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                         description="below this top-class probability (calibrated), no label: "
                                                     "reason \"uncertain: ...\", probabilities kept (default: "
                                                     "the server's --min-confidence, else none)")


class Explanation(BaseModel):
    method: str = Field(description="integrated_gradients")
    target: str = Field(description="the label explained: the predicted one")
    tokens: list[str] = Field(description="the tokens the model read, after truncation")
    attributions: list[float] = Field(description="per token: how far it moved the target's probability from "
                                                  "an all-padding baseline (signed)")
    attention: list[float] | None = Field(description="per token: attention pooling's weight; null for other poolings")
    unknown: list[bool] = Field(description="per token: not in the vocabulary (read as <unk>)")
    dropped_tokens: int = Field(description="tokens past the model's input length, not read")
    cut_at: int = Field(description="where among `tokens` the dropped ones were")
    delta: float = Field(description="integrated gradients' completeness error")


class Prediction(BaseModel):
    """A single-label model's answer for one text."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(description="null when the text has no tokens after cleaning, or is below the "
                                          "minimum confidence: see reason")
    probabilities: dict[str, float] | None = Field(description="calibrated (softmax of logits / temperature); "
                                                               "null when the text has no tokens")
    explanation: Explanation | None = None
    reason: str | None = Field(None, description="why there is no label (only when label is null)")


class LabelSetPrediction(BaseModel):
    """A multi-label model's answer for one text: a set of labels, each label's own probability."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] | None = Field(description="every label whose probability reaches its threshold (chosen on "
                                                 "validation), in the model's label order; [] when none does; "
                                                 "null when the text has no tokens after cleaning, or is below "
                                                 "the minimum confidence: see reason")
    probabilities: dict[str, float] | None = Field(description="each label's own probability (a sigmoid; they do "
                                                               "not sum to 1); null when the text has no tokens")
    explanations: list[Explanation] | None = Field(None, description="with explain: one per label given (its "
                                                                     "target), attributions of its probability")
    reason: str | None = Field(None, description="why there is no answer (only when labels is null); uncertain: "
                                                 "a label's decision (p given, 1 - p left out) is below the "
                                                 "minimum confidence")


class PredictResponse(BaseModel):
    labels: list[str] = Field(description="the model's labels, in the order of its outputs")
    predictions: Union[list[Prediction], list[LabelSetPrediction]] = Field(
        description="one per text, in order: a single-label model's (label) or a multi-label model's (labels)")


STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:1.5em auto;max-width:60em;padding:0 1em;color:#222}
textarea{width:100%;box-sizing:border-box;font:inherit;padding:.5em}
.row{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin:.5em 0}
button{font:inherit;padding:.3em 1.2em}.hidden{display:none}
#error{color:#b00020;white-space:pre-wrap}.result{border-top:1px solid #ddd;padding:.6em 0}
.label{font-weight:bold;font-size:1.1em}.prob{display:flex;align-items:center;gap:.5em;font-size:.9em}
.prob .name{width:9em;overflow:hidden;text-overflow:ellipsis}.prob .track{flex:1;max-width:20em;background:#eee;height:.8em}
.prob .fill{background:#4a7ab5;height:100%}.words{margin-top:.4em;line-height:2}
.tok{padding:1px 3px;border-radius:3px;margin-right:2px}.cut{color:#888;font-style:italic;margin-right:4px}
#minconf{width:6em}.given .name{font-weight:bold}.nolabel{color:#666}.for{font-size:.85em;color:#444;margin-top:.3em}
.key span{padding:1px 4px;border-radius:3px}.key .pos{background:rgba(230,97,1,.6)}.key .neg{background:rgba(33,102,172,.6)}
small{color:#666}
"""

SCRIPT = r"""
"use strict";
const cfg = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
let violations = 0;
document.addEventListener("securitypolicyviolation", () => {
  violations += 1; document.body.dataset.cspViolations = String(violations);
});
if (cfg.auth) { $("tokenrow").classList.remove("hidden"); $("token").value = sessionStorage.getItem("token") || ""; }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function shade(v, scale) {
  const a = scale > 0 ? Math.min(1, Math.abs(v) / scale) * 0.85 : 0;
  return v > 0 ? "rgba(230,97,1," + a.toFixed(3) + ")" : "rgba(33,102,172," + a.toFixed(3) + ")";
}
function words(x) {
  const box = el("div", "words");
  const scale = Math.max(0, ...x.attributions.map(Math.abs));
  const top = x.attention ? Math.max(...x.attention, 1e-9) : 1;
  const cut = () => box.appendChild(el("span", "cut", "[" + x.dropped_tokens + " not read]"));
  x.tokens.forEach((t, i) => {
    if (x.dropped_tokens && i === x.cut_at) cut();
    const s = el("span", "tok", t);
    s.style.background = shade(x.attributions[i], scale);
    let title = "attribution " + (x.attributions[i] >= 0 ? "+" : "") + x.attributions[i].toFixed(4);
    if (x.attention) {
      s.style.boxShadow = "inset 0 -3px 0 rgba(118,42,131," + (x.attention[i] / top).toFixed(3) + ")";
      title += ", attention " + x.attention[i].toFixed(3);
    }
    if (x.unknown[i]) title += ", not in the vocabulary";
    s.title = title;
    s.dataset.attribution = String(x.attributions[i]);
    box.appendChild(s);
  });
  if (x.dropped_tokens && x.cut_at >= x.tokens.length) cut();
  return box;
}
function showSet(p, text, labels) {  // a multi-label model's answer: a set of labels
  const r = el("div", "result");
  const head = el("div", "", "");
  if (p.labels === null) {  // no tokens after cleaning, or uncertain: no answer, and why
    head.appendChild(el("span", "label", "no label"));
    head.appendChild(el("span", "", "  " + p.reason));
    r.appendChild(head); r.appendChild(el("small", "", text));
    return r;
  }
  if (!p.labels.length) head.appendChild(el("span", "label nolabel", "(no label)"));
  p.labels.forEach((lab) => {
    head.appendChild(el("span", "label", lab));
    head.appendChild(el("span", "", "  " + (100 * p.probabilities[lab]).toFixed(1) + "%  "));
  });
  r.appendChild(head);
  labels.forEach((lab, j) => {
    const row = el("div", p.labels.includes(lab) ? "prob given" : "prob");
    row.appendChild(el("span", "name", lab));
    const track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = (100 * p.probabilities[lab]).toFixed(1) + "%";
    track.appendChild(fill); row.appendChild(track);
    row.appendChild(el("span", "value", p.probabilities[lab].toFixed(4)));
    if (cfg.thresholds) row.appendChild(el("small", "threshold", "threshold " + cfg.thresholds[j].toFixed(2)));
    r.appendChild(row);
  });
  (p.explanations || []).forEach((x) => {
    r.appendChild(el("div", "for", "words for " + x.target + ":"));
    r.appendChild(words(x));
  });
  r.appendChild(el("small", "", text));
  return r;
}
function show(texts, data) {
  const out = $("results");
  out.replaceChildren();
  data.predictions.forEach((p, i) => {
    if ("labels" in p) { out.appendChild(showSet(p, texts[i], data.labels)); return; }
    const r = el("div", "result");
    const head = el("div", "", "");
    if (p.label === null) {  // nothing left to read after cleaning: no label, and why
      head.appendChild(el("span", "label", "no label"));
      head.appendChild(el("span", "", "  " + p.reason));
      r.appendChild(head);
      r.appendChild(el("small", "", texts[i]));
      out.appendChild(r);
      return;
    }
    head.appendChild(el("span", "label", p.label));
    head.appendChild(el("span", "", "  " + (100 * p.probabilities[p.label]).toFixed(1) + "%"));
    r.appendChild(head);
    data.labels.forEach((lab) => {
      const row = el("div", "prob");
      row.appendChild(el("span", "name", lab));
      const track = el("div", "track"), fill = el("div", "fill");
      fill.style.width = (100 * p.probabilities[lab]).toFixed(1) + "%";
      track.appendChild(fill); row.appendChild(track);
      row.appendChild(el("span", "value", p.probabilities[lab].toFixed(4)));
      r.appendChild(row);
    });
    if (p.explanation) r.appendChild(words(p.explanation));
    r.appendChild(el("small", "", texts[i]));
    out.appendChild(r);
  });
}
async function classify() {
  const raw = $("texts").value;
  const texts = $("perline").checked ? raw.split(/\r?\n/).filter((t) => t.trim()) : (raw.trim() ? [raw] : []);
  $("error").textContent = "";
  if (!texts.length) { $("error").textContent = "Type or paste a text first."; return; }
  const body = {texts: texts, explain: $("explain").checked};
  const least = $("minconf").value.trim();
  if (least !== "") {
    const value = Number(least);
    if (!(value >= 0 && value <= 1)) { $("error").textContent = "min confidence: give a probability from 0 to 1, or leave it empty"; return; }
    body.min_confidence = value;
  }
  const headers = {"Content-Type": "application/json"};
  if (cfg.auth) { sessionStorage.setItem("token", $("token").value); headers.Authorization = "Bearer " + $("token").value; }
  document.body.dataset.state = "busy";
  $("go").disabled = true;
  try {
    const resp = await fetch("predict", {method: "POST", headers: headers,
      body: JSON.stringify(body)});
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
    show(texts, data);
    document.body.dataset.state = "done";
  } catch (err) {
    $("error").textContent = String(err.message || err);
    document.body.dataset.state = "error";
  } finally { $("go").disabled = false; }
}
$("go").addEventListener("click", classify);
$("texts").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classify(); });
const given = new URLSearchParams(location.hash.slice(1));
if (given.getAll("text").length) {
  $("texts").value = given.getAll("text").join("\n");
  if (given.get("explain") === "0") $("explain").checked = false;
  if (given.get("min_confidence") !== null) $("minconf").value = given.get("min_confidence");
  classify();
}
"""

BODY = """<h1>Text classifier</h1>
<p>Labels: {labels}. Type or paste texts, one per line (up to {max_batch}; {max_explain} with words shaded),
then <b>Classify</b> (or Ctrl+Enter).</p>
<textarea id="texts" rows="7" placeholder="a gripping, beautifully acted film"></textarea>
<div class="row"><label><input type="checkbox" id="perline" checked> one text per line</label>
<label><input type="checkbox" id="explain" checked> shade the words that drove it</label>
<label title="below this, no label but 'uncertain' (empty: {default_least})">min confidence
<input type="number" id="minconf" min="0" max="1" step="0.05" placeholder="{default_least}"></label>
<span id="tokenrow" class="hidden"><label>token <input type="password" id="token" autocomplete="off"></label></span>
<button id="go">Classify</button></div>
<div class="key"><small>Words: <span class="pos">toward the label</span> <span class="neg">against it</span>
(integrated gradients, relative to the strongest word of the text){attention}. Hover a word for its values.{note}</small></div>
<div id="error"></div><div id="results"></div>"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def render_page(labels: list[str], limits, auth: bool, attention: bool = False, thresholds: list[float] | None = None,
                min_confidence: float | None = None, note: str = "") -> tuple[str, dict[str, str]]:
    """The page and the headers to send with it (its Content-Security-Policy allows its own script and style).
    `thresholds`: a multi-label model's, one per label (None for a single-label model); `min_confidence`: the
    server's default, shown in the empty field; `note`: what the explanations are of, when the model shipped is
    not the LSTM alone (explain.part_note)."""
    config = json.dumps({"auth": auth, "labels": labels, "thresholds": thresholds}).replace("<", "\\u003c")
    body = BODY.format(labels=", ".join(html.escape(lab) for lab in labels), max_batch=limits.max_batch,
                       default_least="none" if min_confidence is None else f"{min_confidence:g}",
                       max_explain=limits.max_explain_batch,
                       attention="; underlined by the model's attention weight" if attention else "",
                       note=f" {html.escape(note)}" if note else "")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Text classifier</title><style>{STYLE}</style></head><body>\n{body}\n"
            f'<script type="application/json" id="config">{config}</script>\n<script>{SCRIPT}</script>\n</body></html>\n')
    policy = (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
              "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, {"Content-Security-Policy": policy, "X-Frame-Options": "DENY"}
