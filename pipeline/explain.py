"""Why the model said what it said: per-token attributions, and the HTML report of misclassified examples.

Two views of one prediction, token by token, over the tokens the model read (after truncation):

- **Integrated gradients** (Captum's `LayerIntegratedGradients` over the embedding layer, and over the
  frozen second channel too when there is one): how much each token moved the probability (the
  calibrated one, softmax(logits / temperature), as predict shows it) of the explained class (the predicted one unless told) away from a baseline that is the same text with every
  token replaced by padding. The values are signed: positive pushed toward the class, negative away
  from it. They add up to p(text) - p(baseline) up to `delta`, the method's own error, which shrinks as
  `steps` grows (32 steps keep it around 0.01 on the built-in model).
- **Attention weights**, when `train.pooling` is `attention`: the weights the model's own pooling gave
  each position (they sum to 1). They say where the model looked, not which way a word pushed; a word
  can be looked at and still count against the label.

`misclassified_html` turns the test split's misclassified examples into one self-contained page (no
script, no external resource): most confident first, each word shaded by its attribution toward the
wrong label the model chose, underlined by its attention weight.

A multi-label model (pipeline.tasks.MultiLabel) gives a text a set of labels, each by its own sigmoid
probability: `explain_label_sets` explains each label of a set (the predicted ones: `predicted_label_sets`)
by the attributions of that label's probability, one Explanation per label (none for an empty set; each
label costs one integrated-gradients pass). Its misclassified page explains the labels it got wrong:
those it missed (words shaded toward and against the label's probability) and those it gave wrongly.

When what ships is not the LSTM alone (pipeline.shipped: its fusion with the TF-IDF model, or that model),
the explanations are of the checkpoint's LSTM part, toward the shipped model's label; the CLI, the server's
page, the misclassified page and the model card say so (part_note).
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from pipeline.batching import bucket_batches, pad_batch, truncate
from pipeline.checkpoint import Checkpoint
from pipeline.files import atomic_path
from pipeline.inference import encode_texts, predict_texts
from pipeline.model import TextClassifier
from pipeline.text import tokenize

IG_STEPS = 32         # integration steps: the completeness error stays near 0.01 on the built-in model
EXPLAIN_BATCH = 16    # texts per attribution pass (each pass runs steps x texts sequences)
REPORT_LIMIT = 250    # the report explains at most this many examples, the most confident first


@dataclass
class Explanation:
    """One text's explanation, over the tokens the model read."""

    tokens: list[str]
    attributions: list[float]     # integrated gradients toward `target`, one per token
    attention: list[float] | None  # attention pooling's weights, one per token; None for other poolings
    target: int                   # the class explained (an index into the checkpoint's labels)
    probabilities: list[float]
    delta: float                  # integrated gradients' completeness error for this text
    unknown: list[bool]           # the token is not in the vocabulary (the model read <unk>)
    dropped: int = 0              # tokens of the text the model did not read (cut by max_tokens)
    cut: int = 0                  # where in `tokens` the dropped ones were

    def to_dict(self, labels: Sequence[str]) -> dict:
        return {"method": "integrated_gradients", "target": labels[self.target], "tokens": self.tokens,
                "attributions": [round(a, 6) for a in self.attributions],
                "attention": None if self.attention is None else [round(a, 6) for a in self.attention],
                "unknown": self.unknown, "dropped_tokens": self.dropped, "cut_at": self.cut,
                "delta": round(self.delta, 6) + 0.0}  # + 0.0: never -0.0


def _cut_position(read: int, truncation: str, max_tokens: int | None) -> int:
    """Where the tokens a truncation dropped sat among the tokens read (pipeline.batching.truncate)."""
    if truncation == "tail":
        return 0
    if truncation == "head+tail" and max_tokens is not None:
        return max_tokens // 4
    return read


def _forward_probabilities(model: TextClassifier):
    def forward(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model.probabilities(ids, lengths)  # calibrated: what the user is shown
    return forward


def _embedding_layers(model: TextClassifier) -> list[torch.nn.Module]:
    layers = [model.embedder.embedding]
    if model.embedder.static_embedding is not None:  # the frozen second channel carries the word too
        layers.append(model.embedder.static_embedding)
    return layers


def attribute(model: TextClassifier, sequences: Sequence[np.ndarray], targets: Sequence[int] | None = None,
              steps: int = IG_STEPS, batch_size: int = EXPLAIN_BATCH):
    """Integrated gradients, attention weights and probabilities of id sequences.

    Returns, in the order of `sequences`: per-token attributions (arrays of each sequence's length),
    attention weights (the same, or None per sequence when pooling is not attention), probabilities
    (n, classes), the explained classes (n,) and the completeness errors (n,). `targets` defaults to the
    predicted classes."""
    from captum.attr import LayerIntegratedGradients  # heavy: only when explaining

    if steps < 2:
        raise ValueError("integrated gradients needs at least 2 steps")
    model.eval()
    device = next(model.parameters()).device
    forward = _forward_probabilities(model)
    layers = _embedding_layers(model)
    with warnings.catch_warnings():  # its warning is about layers that feed each other: the two channels do not
        warnings.simplefilter("ignore", UserWarning)
        ig = LayerIntegratedGradients(forward, layers if len(layers) > 1 else layers[0])
    n = len(sequences)
    attributions: list[np.ndarray | None] = [None] * n
    attention: list[np.ndarray | None] = [None] * n
    probs = np.zeros((n, model.cfg.num_classes), dtype=np.float32)
    explained = np.zeros(n, dtype=np.int64)
    deltas = np.zeros(n, dtype=np.float64)
    lengths_all = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
    for index in bucket_batches(lengths_all, batch_size):
        ids, lengths = pad_batch(sequences, index, model.cfg.pad_id)
        ids, lengths = ids.to(device), lengths.to(device)
        with torch.no_grad():
            p = forward(ids, lengths)
            if model.cfg.pooling == "attention":
                states = model.encoder(model.embedder(ids), lengths)
                weights = model.pooler.weights(states, lengths).cpu().numpy()
            else:
                weights = None
        target = p.argmax(dim=-1) if targets is None else torch.as_tensor([targets[i] for i in index], device=device)
        with torch.enable_grad():
            result, delta = ig.attribute(ids, baselines=torch.full_like(ids, model.cfg.pad_id),
                                         additional_forward_args=(lengths,), target=target, n_steps=steps,
                                         return_convergence_delta=True)
        per_layer = result if isinstance(result, (list, tuple)) else [result]
        summed = sum(r.sum(dim=-1) for r in per_layer).detach().cpu().numpy()  # (batch, time)
        probs[index] = p.cpu().numpy()
        explained[index] = target.cpu().numpy()
        deltas[index] = delta.detach().cpu().numpy()
        for row, i in enumerate(index):
            length = int(lengths_all[i])
            attributions[i] = summed[row, :length]
            if weights is not None:
                attention[i] = weights[row, :length]
    return attributions, attention, probs, explained, deltas


def explain_tokens(ckpt: Checkpoint, token_lists: Iterable[Sequence[str]], targets: Sequence[int] | None = None,
                   steps: int = IG_STEPS, batch_size: int = EXPLAIN_BATCH) -> list[Explanation]:
    """Explanations of tokenized texts (a text without tokens gets none: empty lists)."""
    token_lists = [list(tokens) for tokens in token_lists]
    sequences = encode_texts(ckpt, token_lists)
    attributions, attention, probs, explained, deltas = attribute(ckpt.model, sequences, targets, steps, batch_size)
    stoi = ckpt.stoi
    out = []
    for i, tokens in enumerate(token_lists):
        read = list(truncate(tokens, ckpt.max_tokens, ckpt.truncation))
        attrs = [float(a) for a in attributions[i]][:len(read)]  # a text without tokens was read as one <unk>
        weights = None if attention[i] is None else [float(w) for w in attention[i]][:len(read)]
        out.append(Explanation(read, attrs, weights, int(explained[i]), [float(p) for p in probs[i]],
                               float(deltas[i]), [t not in stoi for t in read], len(tokens) - len(read),
                               _cut_position(len(read), ckpt.truncation, ckpt.max_tokens) if len(read) < len(tokens)
                               else len(read)))
    return out


def explain_texts(ckpt: Checkpoint, texts: Sequence[str], targets: Sequence[int] | None = None,
                  steps: int = IG_STEPS, batch_size: int = EXPLAIN_BATCH) -> list[Explanation]:
    """Explanations of raw texts, tokenized as the model was trained."""
    return explain_tokens(ckpt, [tokenize(t, ckpt.text_config) for t in texts], targets, steps, batch_size)


def explain_label_sets(ckpt: Checkpoint, token_lists: Sequence[Sequence[str]], label_sets: Sequence[Sequence[int]],
                       steps: int = IG_STEPS, batch_size: int = EXPLAIN_BATCH) -> list[list[Explanation]]:
    """Per tokenized text, one explanation per label of its set (indices into the checkpoint's labels), in
    the set's order: the attributions of that label's probability (a multi-label model's own sigmoid)."""
    pairs = [(i, target) for i, targets in enumerate(label_sets) for target in targets]
    flat = explain_tokens(ckpt, [token_lists[i] for i, _ in pairs], [t for _, t in pairs], steps, batch_size) \
        if pairs else []
    out: list[list[Explanation]] = [[] for _ in label_sets]
    for (i, _), explanation in zip(pairs, flat):
        out[i].append(explanation)
    return out


def predicted_label_sets(ckpt: Checkpoint, texts: Sequence[str], steps: int = IG_STEPS,
                         batch_size: int = EXPLAIN_BATCH) -> list[list[Explanation]]:
    """Per raw text, an explanation of each label a multi-label model gives it (its probability at or above
    the label's threshold); an empty list for a text given none."""
    decided = ckpt.task.decide(np.nan_to_num(predict_texts(ckpt, texts).probs, nan=0.0))
    tokens = [tokenize(t, ckpt.text_config) for t in texts]
    return explain_label_sets(ckpt, tokens, [np.flatnonzero(row).tolist() for row in decided], steps, batch_size)


def part_note(ckpt: Checkpoint) -> str:
    """"" when the LSTM ships alone; else the sentence saying that the explanations are its LSTM part's."""
    if ckpt.shipped == "lstm":
        return ""
    what = (f"the fusion of the LSTM and the TF-IDF model (weight {ckpt.fusion_weight:g} on the LSTM)"
            if ckpt.shipped == "fusion" else "the TF-IDF model")
    return (f"The model shipped is {what}: the words are shaded by the attributions of its LSTM part, the part "
            "explained; the labels and probabilities are the shipped model's.")


# --- text and HTML rendering -----------------------------------------------------------------------------


def format_explanation(explanation: Explanation, labels: Sequence[str], top: int = 5) -> str:
    """A terminal-friendly summary: the words that pushed hardest toward and against the explained label."""
    pairs = list(zip(explanation.tokens, explanation.attributions))
    toward = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:top]
    against = sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:top]
    show = lambda items: "  ".join(f"{t} {a:+.3f}" for t, a in items) or "-"  # noqa: E731
    lines = [f"  for {labels[explanation.target]}: {show(toward)}", f"  against: {show(against)}"]
    if explanation.attention is not None and explanation.tokens:
        looked = sorted(zip(explanation.tokens, explanation.attention), key=lambda p: -p[1])[:top]
        lines.append("  attention: " + "  ".join(f"{t} {w:.2f}" for t, w in looked))
    if explanation.dropped:
        lines.append(f"  ({explanation.dropped} tokens past the model's input length were not read)")
    return "\n".join(lines)


def tokens_html(explanation: Explanation) -> str:
    """The tokens as spans: class p (toward) or n (against), --a the strength relative to the text's
    strongest word, --w the attention weight relative to the text's largest (drawn by _REPORT_STYLE)."""
    scale = max((abs(a) for a in explanation.attributions), default=0.0)
    top_weight = max(explanation.attention or [0.0]) or 1.0
    cut = f'<span class="cut">[{explanation.dropped} not read]</span>'
    spans = []
    for i, (token, value) in enumerate(zip(explanation.tokens, explanation.attributions)):
        if explanation.dropped and i == explanation.cut:
            spans.append(cut)
        style = f"--a:{0 if scale <= 0 else abs(value) / scale:.2f}"
        title = f"{value:+.4f}"
        if explanation.attention is not None:
            style += f";--w:{explanation.attention[i] / top_weight:.2f}"
            title += f", attention {explanation.attention[i]:.3f}"
        if explanation.unknown[i]:
            title += ", not in the vocabulary"
        spans.append(f'<span class="{"p" if value > 0 else "n"}" style="{style}" title="{title}">'
                     f"{html.escape(token)}</span>")
    if explanation.dropped and explanation.cut >= len(explanation.tokens):
        spans.append(cut)
    return " ".join(spans)


_REPORT_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;vertical-align:top;text-align:left}
th{background:#f4f4f4}.num{text-align:right;white-space:nowrap}.cut{color:#888;font-style:italic}
.p,.n{padding:1px 2px;border-radius:3px;box-shadow:inset 0 -3px 0 rgba(118,42,131,var(--w,0))}
.p{background:rgba(230,97,1,calc(var(--a) * .85))}.n{background:rgba(33,102,172,calc(var(--a) * .85))}
"""


def misclassified_html(ckpt: Checkpoint, rows: Sequence[dict], total: int | None = None,
                       steps: int = IG_STEPS) -> str:
    """The page: one table row per misclassified example (dicts with text, label, predicted, confidence and
    optionally tokens), in the order given, each word shaded by its attribution toward the prediction. A
    multi-label model's rows: multilabel_misclassified_html."""
    labels = ckpt.labels
    token_lists = [list(r["tokens"]) if isinstance(r.get("tokens"), (list, tuple, np.ndarray))
                   else tokenize(str(r["text"]), ckpt.text_config) for r in rows]
    if ckpt.task.name == "multi_label":
        return multilabel_misclassified_html(ckpt, rows, token_lists, total, steps)
    targets = [labels.index(r["predicted"]) for r in rows]
    explanations = explain_tokens(ckpt, token_lists, targets, steps) if rows else []
    total = len(rows) if total is None else total
    shown = f"All {total}" if total == len(rows) else f"The {len(rows)} most confident of {total}"
    attention_note = ("; underlined by the model's attention weight (darker: looked at more)"
                      if ckpt.model.cfg.pooling == "attention" else "")
    body = []
    for rank, (row, explanation) in enumerate(zip(rows, explanations), 1):
        body.append(f"<tr><td class=num>{rank}</td><td class=num>{float(row['confidence']):.4f}</td>"
                    f"<td>{html.escape(str(row['label']))}</td><td>{html.escape(str(row['predicted']))}</td>"
                    f"<td>{tokens_html(explanation)}<br><small>{html.escape(str(row['text']))}</small></td></tr>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Misclassified test examples</title>
<style>{_REPORT_STYLE}</style></head><body>
<h1>Misclassified test examples</h1>
<p>{shown} misclassified examples of the test split, most confident first. Each word the model read is shaded
by its integrated-gradients attribution toward the label the model wrongly chose: <span class="p" style="--a:.7">toward
it</span> <span class="n" style="--a:.7">against it</span>, strength relative to the strongest word of the same
text{attention_note}. Hover a word for its attribution. The small line under each is the text as written.</p>
{_note_html(ckpt)}<table><thead><tr><th>#</th><th>confidence</th><th>true</th><th>predicted</th><th>words, by attribution</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def _note_html(ckpt: Checkpoint) -> str:
    note = part_note(ckpt)
    return f"<p><b>{html.escape(note)}</b></p>\n" if note else ""


LABELS_SEPARATOR = " | "  # how the evaluate stage writes a label set in misclassified.csv


def label_set(row: dict, key: str) -> list[str]:
    """A row's label set: its list under `key`_set where given (the evaluate stage passes them), else its
    " | "-joined string under `key` split ("" is the empty set)."""
    given = row.get(f"{key}_set")
    if isinstance(given, (list, tuple, np.ndarray)):
        return [str(x) for x in given]
    text = str(row[key]) if row.get(key) is not None else ""
    return [name for name in text.split(LABELS_SEPARATOR) if name] if text else []


def multilabel_misclassified_html(ckpt: Checkpoint, rows: Sequence[dict], token_lists: list[list[str]],
                                  total: int | None = None, steps: int = IG_STEPS) -> str:
    """A multi-label model's page: per text not given exactly its labels, each label it got wrong (missed:
    true but not given; spurious: given but not true) explained by the attributions of that label's own
    probability, words shaded toward it (orange) and against it (blue)."""
    labels, index = ckpt.labels, {name: j for j, name in enumerate(ckpt.labels)}
    # The thresholds of what decided (the shipped model's); p is the LSTM part's when a fusion ships.
    fused = ckpt.shipped != "lstm"
    thresholds = (ckpt.shipped_thresholds if fused else ckpt.thresholds) or [0.5] * len(labels)
    wrong = []
    for row in rows:
        true, given = set(label_set(row, "label")), set(label_set(row, "predicted"))
        wrong.append([(name, "missed") for name in labels if name in true - given]
                     + [(name, "wrongly given") for name in labels if name in given - true])
    found = explain_label_sets(ckpt, token_lists, [[index[name] for name, _ in w] for w in wrong], steps)
    total = len(rows) if total is None else total
    shown = f"All {total}" if total == len(rows) else f"The {len(rows)} most confident of {total}"
    body = []
    for rank, (row, mistakes, explanations) in enumerate(zip(rows, wrong, found), 1):
        parts = []
        for (name, kind), explanation in zip(mistakes, explanations):
            j = index[name]
            parts.append(f'<div class="{kind.split()[0]}"><b>{kind} {html.escape(name)}</b> '
                         f"<small>(p {explanation.probabilities[j]:.4f}{' of the LSTM part' if fused else ''}, "
                         f"threshold {thresholds[j]:.2f}{' of the shipped model' if fused else ''})</small>: "
                         f"{tokens_html(explanation)}</div>")
        show = lambda names: html.escape(LABELS_SEPARATOR.join(names)) or "<i>(none)</i>"  # noqa: E731
        body.append(f"<tr><td class=num>{rank}</td><td class=num>{float(row['confidence']):.4f}</td>"
                    f"<td>{show(label_set(row, 'label'))}</td><td>{show(label_set(row, 'predicted'))}</td>"
                    f"<td>{''.join(parts)}<small>{html.escape(str(row['text']))}</small></td></tr>")
    attention_note = ("; underlined by the model's attention weight" if ckpt.model.cfg.pooling == "attention" else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Misclassified test examples</title>
<style>{_REPORT_STYLE}</style></head><body>
<h1>Misclassified test examples</h1>
<p>{shown} test texts not given exactly their labels, the most confident first (confidence: the least sure of
a text's label decisions). For each label the model got wrong, <b>missed</b> (a true label not given) or
<b>wrongly given</b>, each word the model read is shaded by its integrated-gradients attribution to that
label's own probability: <span class="p" style="--a:.7">toward the label</span>
<span class="n" style="--a:.7">against it</span>, strength relative to the strongest word{attention_note}.
Hover a word for its attribution. The small line under each is the text as written.</p>
{_note_html(ckpt)}<table><thead><tr><th>#</th><th>confidence</th><th>true</th><th>predicted</th><th>words, by attribution, per wrong label</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def write_misclassified_report(ckpt: Checkpoint, wrong, path: Path, limit: int = REPORT_LIMIT) -> int:
    """Write misclassified.html from the evaluate stage's table of wrong predictions (a DataFrame with text,
    label, predicted, confidence and, when present, tokens; most confident first). Returns the rows shown."""
    records = wrong.to_dict("records") if hasattr(wrong, "to_dict") else list(wrong)
    page = misclassified_html(ckpt, records[:limit], total=len(records))
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return min(limit, len(records))
