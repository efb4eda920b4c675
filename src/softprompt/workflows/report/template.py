"""The report page: one Jinja2 template (autoescaped), inline CSS and JS, no network."""

from __future__ import annotations

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="softprompt report">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 0 20px 40px; color: #1f2328; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 18px; margin-top: 28px;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.muted { color: #57606a; } .small { font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.better { color: #1a7f37; font-weight: 600; } td.worse { color: #cf222e; font-weight: 600; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
img.plot { max-width: 100%; border: 1px solid #d0d7de; margin: 6px 0; }
figure { margin: 10px 0; } figcaption { color: #57606a; font-size: 12px; }
img.thumb { width: 64px; height: auto; image-rendering: pixelated; }
.badge { font-size: 11px; padding: 1px 6px; border-radius: 8px; white-space: nowrap; }
.fixed { background: #dafbe1; color: #1a7f37; } .broken { background: #ffebe9; color: #cf222e; }
.changed { background: #fff8c5; color: #7d4e00; } .same { background: #eaeef2; color: #57606a; }
.right { color: #1a7f37; } .wrong { color: #cf222e; }
#filters button { margin-right: 6px; padding: 3px 10px; border: 1px solid #d0d7de;
                  background: #f6f8fa; border-radius: 6px; cursor: pointer; }
#filters button.active { background: #0969da; color: white; border-color: #0969da; }
#examples td.text { max-width: 360px; overflow-wrap: anywhere; }
.unavailable { background: #fff8c5; padding: 8px 12px; border-radius: 6px; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="muted">Run <code>{{ run_dir }}</code>; report generated {{ generated }}.
Baseline: {% if baseline_label %}<b>{{ baseline_label }}</b>
(<code>{{ baseline_dir }}</code>){% else %}none{% endif %}.</p>

<h2 id="summary">Run summary</h2>
<table id="run-summary">
{% for name, value in summary %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
{% if methods %}<table id="methods"><tr><th>trainable part</th><th>parameters</th></tr>
{% for name, count in methods %}<tr><td>{{ name }}</td><td class="num">{{ count }}</td></tr>
{% endfor %}</table>{% endif %}
<details><summary>config.yaml</summary><pre>{{ config_text }}</pre></details>

<h2 id="metrics-section">Metrics: {{ baseline_label or "no baseline" }} vs tuned</h2>
{% if metric_rows %}
<table id="metrics">
<tr><th>split</th><th>metric</th><th>{{ baseline_label or "baseline" }}</th><th>tuned</th>
<th>&Delta;</th></tr>
{% for r in metric_rows %}<tr data-split="{{ r.split }}" data-metric="{{ r.metric }}">
<td>{{ r.split }}</td><td>{{ r.metric }}</td>
<td class="num" data-role="baseline" data-value="{{ r.baseline_raw }}">{{ r.baseline_text }}</td>
<td class="num" data-role="tuned" data-value="{{ r.tuned_raw }}">{{ r.tuned_text }}</td>
<td class="num {{ r.delta_class }}" data-role="delta">{{ r.delta_text }}</td></tr>
{% endfor %}</table>
<p class="muted small">Scores are in percent (loss: mean cross-entropy per label token).
The tuned numbers are those of <code>best/</code> (all_results.json); the baseline's come
from its metrics.json. &Delta; = tuned &minus; baseline; green is better.</p>
{% else %}<p class="unavailable">The run recorded no val/test metrics.</p>{% endif %}
{% if task_rows %}
<h3>Per task (or ensemble member)</h3>
<table id="task-metrics">
<tr><th>split</th><th>task</th><th>metric</th><th>{{ baseline_label or "baseline" }}</th>
<th>tuned</th><th>&Delta;</th></tr>
{% for r in task_rows %}<tr data-split="{{ r.split }}" data-task="{{ r.task }}"
data-metric="{{ r.metric }}"><td>{{ r.split }}</td><td>{{ r.task }}</td><td>{{ r.metric }}</td>
<td class="num" data-role="baseline" data-value="{{ r.baseline_raw }}">{{ r.baseline_text }}</td>
<td class="num" data-role="tuned" data-value="{{ r.tuned_raw }}">{{ r.tuned_text }}</td>
<td class="num {{ r.delta_class }}" data-role="delta">{{ r.delta_text }}</td></tr>
{% endfor %}</table>{% endif %}

<h2 id="curves">Training and evaluation curves</h2>
{% for f in figures if f.section == "training" %}<figure><img class="plot"
alt="{{ f.title }}" src="{{ f.uri }}"><figcaption>{{ f.title }} ({{ f.file }})
{{ f.caption }}</figcaption></figure>
{% else %}<p class="muted">metrics.jsonl holds no training records.</p>{% endfor %}

{% if analysis or groups %}<h2 id="analysis">Analysis ({{ split }})</h2>{% endif %}
{% for f in analysis %}<figure><img class="plot" alt="{{ f.title }}" src="{{ f.uri }}">
<figcaption>{{ f.title }} ({{ f.file }}) {{ f.caption }}</figcaption></figure>
{% endfor %}
{% if groups %}<table id="by-type"><tr><th>{{ groups_what }}</th><th>examples</th>
<th>{{ baseline_label or "baseline" }}</th><th>tuned</th></tr>
{% for g in groups %}<tr><td>{{ g.group }}</td><td class="num">{{ g.count }}</td>
<td class="num">{{ g.baseline_text }}</td><td class="num">{{ g.tuned_text }}</td></tr>
{% endfor %}</table>
<p class="muted small">Accuracy (exact match with a reference, in percent) by {{ groups_what }}.</p>
{% endif %}

<h2 id="examples-section">Examples{% if split %} ({{ split }}){% endif %}</h2>
{% if rows %}
<p>{{ counts.total }} examples in <code>{{ predictions_file }}</code>{% if counts.compared %};
against the baseline: <b>{{ counts.changed_any }}</b> answers changed,
<span class="badge fixed">{{ counts.fixed }} fixed</span>
<span class="badge broken">{{ counts.broken }} broken</span>{% endif %}.
This page shows {{ rows|length }} of them (at most {{ max_examples }}: every changed answer
first, then a seeded random sample of the others); the full records stay in the JSONL files.</p>
{% for f in figures if f.section == "examples" %}<figure><img class="plot" alt="{{ f.title }}"
src="{{ f.uri }}"><figcaption>{{ f.title }} ({{ f.file }}) {{ f.caption }}</figcaption></figure>
{% endfor %}
<div id="filters">
<button data-filter="all" class="active">all</button><button data-filter="changed">changed</button><button data-filter="fixed">fixed</button><button data-filter="broken">broken</button>
<input id="search" type="search" placeholder="search text" size="24">
<span id="shown-count" class="muted small"></span>
</div>
<table id="examples">
<tr><th>#</th>{% if has_images %}<th>image</th>{% endif %}<th>{{ text_header }}</th>
<th>reference</th><th>{{ baseline_label or "baseline" }}</th><th>tuned</th><th></th></tr>
{% for r in rows %}<tr class="example" data-status="{{ r.status }}"
data-changed="{{ 1 if r.changed else 0 }}"><td class="num">{{ r.index }}</td>
{% if has_images %}<td>{% if r.thumb %}<img class="thumb" src="{{ r.thumb }}"
alt="{{ r.image_name }}" title="{{ r.image_name }}">{% else %}<span class="muted small">
no image</span>{% endif %}</td>{% endif %}
<td class="text">{{ r.text }}</td><td class="text">{{ r.reference }}</td>
<td class="text {{ r.baseline_class }}">{{ r.baseline }}</td>
<td class="text {{ r.tuned_class }}">{{ r.tuned }}</td>
<td><span class="badge {{ r.status }}">{{ r.status }}</span></td></tr>
{% endfor %}</table>
{% else %}<p class="unavailable">No per-example predictions in {{ run_dir }}
(predictions.test.jsonl / predictions.val.jsonl are written when training ends).</p>
{% endif %}

<h2 id="prompt-inspection">Prompt inspection</h2>
{% if inspection %}
<p class="muted">Each virtual token of <code>best/</code>: its norm, its nearest vocabulary
tokens by cosine similarity, and its drift from its initial value.
Vocabulary embedding norm: mean {{ vocab_mean }}, std {{ vocab_std }}.</p>
<table id="inspection"><tr><th>token</th><th>norm</th><th>nearest tokens (cosine)</th>
<th>drift</th></tr>
{% for t in inspection %}<tr><td class="num">{{ t.index }}</td><td class="num">{{ t.norm }}</td>
<td>{% for n in t.nearest %}<code>{{ n.token }}</code> ({{ n.cosine }}){% if not loop.last %},
{% endif %}{% endfor %}</td><td class="num">{{ t.drift }}</td></tr>
{% endfor %}</table>
{% for k, v in inspection_extra.items() %}<div class="small muted">{{ k }}: {{ v }}</div>{% endfor %}
{% else %}<p class="unavailable" id="inspection-unavailable">Prompt inspection unavailable:
{{ inspection_error }}</p>{% endif %}

<h2 id="files">Files</h2>
<p class="small muted">Figures beside this page: {% for f in figures %}<code>{{ f.file }}</code>
{% endfor %}; summary: <code>report.md</code>.</p>
<script>
(function () {
  var rows = Array.prototype.slice.call(document.querySelectorAll("#examples tr.example"));
  var buttons = document.querySelectorAll("#filters button");
  var search = document.getElementById("search");
  var shown = document.getElementById("shown-count");
  var mode = "all";
  function keep(row) {
    if (mode === "changed" && row.dataset.changed !== "1") return false;
    if ((mode === "fixed" || mode === "broken") && row.dataset.status !== mode) return false;
    var q = search ? search.value.trim().toLowerCase() : "";
    return !q || row.textContent.toLowerCase().indexOf(q) >= 0;
  }
  function apply() {
    var n = 0;
    rows.forEach(function (row) { var ok = keep(row); row.style.display = ok ? "" : "none";
                                  if (ok) n++; });
    if (shown) shown.textContent = "showing " + n + " of " + rows.length;
  }
  Array.prototype.forEach.call(buttons, function (b) {
    b.addEventListener("click", function () {
      mode = b.dataset.filter;
      Array.prototype.forEach.call(buttons, function (o) { o.classList.toggle("active", o === b); });
      apply();
    });
  });
  if (search) search.addEventListener("input", apply);
  apply();
})();
</script>
</body>
</html>
"""
