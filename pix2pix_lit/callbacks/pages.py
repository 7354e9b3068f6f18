"""``index.html`` beside the images a run writes — what the official code's ``results/<name>/test_latest/
index.html`` is, browsable offline: ``test`` (source | output | target with per-image scores, the metrics.json
summary on top), ``predict`` (the outputs), ``fit`` (each validation's grids). One static file: its rows are a JSON
block in the page and a few lines of script show them a page of rows at a time, sortable by any score and
filterable by name, so 10,000 rows open at once; images are linked relatively and loaded lazily. Nothing is
fetched from elsewhere, and no server is needed.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from pix2pix_lit.data.io import write_text_atomic

ROWS_PER_PAGE = 100

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1em 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }}
th.score {{ cursor: pointer; user-select: none; }} th.score:hover {{ background: #eef; }}
img {{ max-width: 256px; max-height: 256px; image-rendering: pixelated; display: block; }}
#summary td {{ border: none; padding: 1px 12px 1px 0; }} .num {{ font-variant-numeric: tabular-nums; }}
#controls {{ margin: 1em 0; }} #controls button {{ margin: 0 4px; }}
</style></head>
<body>
<h1>{title}</h1>
<table id="summary"></table>
<div id="controls"><input id="filter" placeholder="filter by name" size="30">
<button id="prev">&larr; previous</button><span id="where"></span><button id="next">next &rarr;</button></div>
<table id="rows"><thead></thead><tbody></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const PER_PAGE = {per_page};
let shown = DATA.rows.map((r, i) => Object.assign({{"#": i + 1}}, r)), page = 0, sortKey = null, sortUp = true;

function cell(tag, text, cls) {{
  const c = document.createElement(tag); c.textContent = text; if (cls) c.className = cls; return c;
}}
function fmt(v) {{ return typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4)) : (v ?? ""); }}

const summary = document.getElementById("summary");
for (const [k, v] of Object.entries(DATA.summary || {{}})) {{
  const tr = document.createElement("tr");
  tr.append(cell("td", k), cell("td", typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v), "num"));
  summary.append(tr);
}}

const head = document.querySelector("#rows thead"), body = document.querySelector("#rows tbody");
const htr = document.createElement("tr");
htr.append(cell("th", "#"), cell("th", "name"));
for (const c of DATA.images) htr.append(cell("th", c));
for (const s of DATA.scores) {{
  const th = cell("th", s, "score");
  th.title = "sort by " + s;
  th.onclick = () => {{ sortUp = sortKey === s ? !sortUp : true; sortKey = s; apply(); }};
  htr.append(th);
}}
head.append(htr);

function apply() {{
  const f = document.getElementById("filter").value.toLowerCase();
  shown = DATA.rows.map((r, i) => Object.assign({{"#": i + 1}}, r)).filter(r => !f || r.name.toLowerCase().includes(f));
  if (sortKey) shown.sort((a, b) => ((a[sortKey] ?? Infinity) - (b[sortKey] ?? Infinity)) * (sortUp ? 1 : -1));
  page = 0; render();
}}

function render() {{
  const pages = Math.max(1, Math.ceil(shown.length / PER_PAGE));
  page = Math.min(Math.max(page, 0), pages - 1);
  const order = sortKey ? ", by " + sortKey + (sortUp ? " ascending" : " descending") : "";
  document.getElementById("where").textContent = ` page ${{page + 1}} of ${{pages}} (${{shown.length}} rows${{order}}) `;
  body.replaceChildren();
  for (const r of shown.slice(page * PER_PAGE, (page + 1) * PER_PAGE)) {{
    const tr = document.createElement("tr");
    tr.append(cell("td", r["#"], "num"), cell("td", r.name));
    for (const c of DATA.images) {{
      const td = document.createElement("td");
      if (r[c]) {{ const img = document.createElement("img"); img.loading = "lazy"; img.src = r[c]; img.alt = c; td.append(img); }}
      tr.append(td);
    }}
    for (const s of DATA.scores) tr.append(cell("td", fmt(r[s]), "num"));
    body.append(tr);
  }}
}}

document.getElementById("prev").onclick = () => {{ page -= 1; render(); }};
document.getElementById("next").onclick = () => {{ page += 1; render(); }};
document.getElementById("filter").oninput = apply;
render();
</script>
</body></html>
"""


def link(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder``, as a URL path (each part escaped)."""
    return "/".join(quote(part) for part in Path(os.path.relpath(path, folder)).parts)


def write_page(folder: Path, title: str, rows: list[dict[str, Any]], images: list[str], scores: list[str],
               summary: Optional[dict[str, Any]] = None) -> Path:
    """``folder/index.html``: ``rows`` (each a ``name``, image columns ``images`` as paths relative to ``folder``,
    numeric ``scores``), under ``summary`` (shown as a table of key: value)."""
    def finite(v: Any) -> Any:  # JSON has no NaN or infinity (PSNR of identical images): shown empty
        return None if isinstance(v, float) and not math.isfinite(v) else v

    rows = [{k: finite(v) for k, v in r.items()} for r in rows]
    summary = {k: finite(v) for k, v in (summary or {}).items()}
    data = {"rows": rows, "images": images, "scores": scores, "summary": summary}
    text = _PAGE.format(title=html.escape(title), per_page=ROWS_PER_PAGE,
                        data=json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/"))
    path = Path(folder) / "index.html"
    write_text_atomic(path, text)
    return path
