"""The HTML report of a run: one self-contained directory (``index.html`` + ``images/``) that opens
from disk or any static web server.

Contents: the metrics table, the training curves (PNG; drawn from the model dir's history when the
trainer did not write one), a gallery of images with their generated and reference captions, and
for the attention model the attention maps. Every image is copied (as a thumbnail) into the
report's ``images/`` folder and linked relatively, so the directory can be moved or uploaded.

The page carries a small script that, once the page has loaded, counts the ``<img>`` elements that
decoded (``naturalWidth > 0``) and writes the result into ``#render-check``: a headless browser's
``--dump-dom`` shows whether the report really renders (see ``tests/launch/test_report.py``).
"""
from __future__ import annotations

import html
import io
import json
import os
import shutil

import captionbeam.pipelines.io as pio
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

REPORT_FILE = "index.html"
IMAGES_DIR = "images"
THUMB_SIDE = 256

# metric key -> display name, in table order (NLTK BLEU first, then pycocoevalcap's own keys)
METRIC_NAMES = (
    ("bleu1", "BLEU-1 (NLTK)"), ("bleu2", "BLEU-2 (NLTK)"), ("bleu3", "BLEU-3 (NLTK)"), ("bleu4", "BLEU-4 (NLTK)"),
    ("Bleu_1", "BLEU-1 (COCO)"), ("Bleu_2", "BLEU-2 (COCO)"), ("Bleu_3", "BLEU-3 (COCO)"),
    ("Bleu_4", "BLEU-4 (COCO)"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr-D"),
    ("colour_words_true", "colour words true"), ("colour_words_true_image_blind", "  ... image-blind"),
    ("shape_words_true", "shape words true"), ("shape_words_true_image_blind", "  ... image-blind"),
)
NESTED_METRICS = ("coco", "grounding")   # nested sections whose numbers are scores


@dataclass
class GalleryItem:
    image: str                                   # path (local or gs://) of the source image
    generated: str                               # the model's caption
    references: List[str] = field(default_factory=list)
    image_id: str = ""
    attention: Optional[str] = None              # path of an attention-map PNG, if any
    note: str = ""                               # e.g. "held out (test split)"


@dataclass
class ReportData:
    title: str
    metrics: Dict[str, object] = field(default_factory=dict)   # flat or {"bleu1".., "coco": {...}}
    gallery: List[GalleryItem] = field(default_factory=list)
    curves_png: Optional[str] = None             # an existing PNG of the training curves
    history: Optional[Mapping[str, Sequence[float]]] = None    # or the history to draw them from
    stages: List[Dict[str, object]] = field(default_factory=list)  # [{"name", "seconds", "summary"}]
    settings: Dict[str, object] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- pure helpers
def flatten_metrics(metrics: Mapping[str, object]) -> Dict[str, float]:
    """``{"bleu1": .., "coco": {"CIDEr": ..}}`` -> one flat dict of numbers (nested keys lifted)."""
    flat: Dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, Mapping) and key not in NESTED_METRICS:
            continue   # bookkeeping (counts, decoding settings, BLEU internals), not scores
        if isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    flat.setdefault(k, float(v))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


def metrics_rows(metrics: Mapping[str, object]) -> List[tuple]:
    """(display name, value) rows: the known metrics in order, then any other numbers."""
    flat = flatten_metrics(metrics)
    rows = [(name, flat.pop(key)) for key, name in METRIC_NAMES if key in flat]
    rows += sorted(flat.items())
    return rows


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# ----------------------------------------------------------------------------- files
def _thumbnail(data: bytes, dest: str, side: int = THUMB_SIDE) -> None:
    """Write a JPEG thumbnail (RGB, longest side ``side``) of image bytes to ``dest``."""
    from PIL import Image, ImageOps
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((side, side))
        im.save(dest, "JPEG", quality=88)


def plot_history(history: Mapping[str, Sequence[float]], dest: str) -> Optional[str]:
    """Draw loss curves (every ``*loss*`` series, by epoch) into ``dest``; None when there is nothing."""
    series = {k: list(v) for k, v in (history or {}).items()
              if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v)}
    losses = {k: v for k, v in series.items() if "loss" in k}
    if not losses:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name, values in sorted(losses.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1.5rem} td,th{border:1px solid #ddd;padding:.3rem .7rem;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem;background:#fafafa}
.card img{width:100%;height:auto;display:block;border-radius:4px}
.gen{font-weight:600;margin:.5rem 0 .3rem} .gen::before{content:"model: ";color:#0a6;font-weight:400}
.refs{margin:.2rem 0 0 1rem;padding:0;color:#444;font-size:.9rem} .id{color:#888;font-size:.8rem}
.att img{margin-top:.4rem} #render-check{color:#888;font-size:.8rem}
"""

_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var el = document.getElementById('render-check');
  el.setAttribute('data-images-total', String(imgs.length));
  el.setAttribute('data-images-loaded', String(ok));
  el.textContent = 'rendered: ' + ok + ' of ' + imgs.length + ' images loaded';
});
"""


def write_report(data: ReportData, out_dir: str) -> str:
    """Write ``out_dir/index.html`` and ``out_dir/images/``; returns the path of index.html.
    ``out_dir`` is local (upload the directory afterwards for a bucket)."""
    img_dir = os.path.join(out_dir, IMAGES_DIR)
    if os.path.isdir(img_dir):
        shutil.rmtree(img_dir)
    os.makedirs(img_dir, exist_ok=True)
    parts: List[str] = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(data.title)}</title>", '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style>", f"<script>{_CHECK_JS}</script>", "</head><body>",
        f"<h1>{_e(data.title)}</h1>",
    ]
    if data.notes:
        parts.append("".join(f'<p class="sub">{_e(n)}</p>' for n in data.notes))

    rows = metrics_rows(data.metrics)
    parts.append('<h2 id="metrics">Metrics</h2>')
    if rows:
        parts.append('<table class="metrics"><tr><th>metric</th><th>value</th></tr>')
        parts += [f'<tr><td>{_e(name)}</td><td class="num">{value:.4f}</td></tr>' for name, value in rows]
        parts.append("</table>")
    else:
        parts.append("<p>No metrics were computed.</p>")

    curves = None
    if data.curves_png:
        curves = os.path.join(img_dir, "training_curves.png")
        with open(curves, "wb") as f:
            f.write(pio.read_bytes(data.curves_png))
    elif data.history:
        curves = plot_history(data.history, os.path.join(img_dir, "training_curves.png"))
    parts.append('<h2 id="curves">Training curves</h2>')
    if curves:
        parts.append(f'<img class="curves" src="{IMAGES_DIR}/training_curves.png" alt="training curves" '
                     f'style="max-width:720px;width:100%">')
    else:
        parts.append("<p>No training history was found.</p>")

    parts.append(f'<h2 id="gallery">Captions ({len(data.gallery)} images)</h2><div class="gallery">')
    for n, item in enumerate(data.gallery):
        name = f"{n:03d}.jpg"
        try:
            _thumbnail(pio.read_bytes(item.image), os.path.join(img_dir, name))
            img = f'<img src="{IMAGES_DIR}/{name}" alt="{_e(item.image_id or item.image)}">'
        except (OSError, ValueError) as e:  # unreadable source: say so in the card
            img = f"<p>image not available: {_e(type(e).__name__)}: {_e(e)}</p>"
        att = ""
        if item.attention:
            att_name = f"{n:03d}-attention.png"
            try:
                with open(os.path.join(img_dir, att_name), "wb") as f:
                    f.write(pio.read_bytes(item.attention))
                att = (f'<details class="att" open><summary>attention maps</summary>'
                       f'<img src="{IMAGES_DIR}/{att_name}" alt="attention maps"></details>')
            except OSError:
                att = ""
        refs = "".join(f"<li>{_e(r)}</li>" for r in item.references)
        parts.append(
            f'<div class="card">{img}<p class="gen">{_e(item.generated)}</p>'
            + (f'<ul class="refs">{refs}</ul>' if refs else "")
            + f'<div class="id">{_e(item.image_id)}{(" · " + _e(item.note)) if item.note else ""}</div>{att}</div>')
    parts.append("</div>")

    if data.stages:
        parts.append('<h2 id="stages">Stages</h2><table><tr><th>stage</th><th>seconds</th><th>summary</th></tr>')
        for st in data.stages:
            parts.append(f"<tr><td>{_e(st.get('name', ''))}</td><td class=\"num\">{float(st.get('seconds', 0)):.1f}</td>"
                         f"<td>{_e(st.get('summary', ''))}</td></tr>")
        parts.append("</table>")
    if data.settings:
        parts.append('<h2 id="settings">Settings</h2><pre>'
                     + _e(json.dumps(data.settings, indent=2, sort_keys=True, default=str)) + "</pre>")
    parts.append('<p id="render-check" data-images-loaded="" data-images-total="">(page script did not run)</p>')
    parts.append("</body></html>")
    path = os.path.join(out_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return path


# ----------------------------------------------------------------------------- from a model dir
def history_columns(epochs: Sequence[Mapping[str, float]]) -> Optional[dict]:
    """The trainer's per-epoch rows (``[{"epoch": 1, "loss": .., "val_loss": ..}, ...]``) as columns
    (``{"loss": [...], "val_loss": [...]}``) for the curves; None without rows."""
    if not epochs:
        return None
    keys = sorted({k for row in epochs for k in row if k != "epoch"})
    return {k: [row.get(k) for row in epochs] for k in keys}


def load_history(model_dir: str) -> Optional[dict]:
    """The trainer's history (``history.json``, read by :func:`model.progress.load_history`) as columns."""
    from captionbeam.model.progress import load_history as load_epochs
    return history_columns(load_epochs(model_dir))


def find_curves_png(model_dir: str) -> Optional[str]:
    """A training-curve PNG the trainer wrote into the model dir, if any."""
    import captionbeam.pipelines.io as pio
    found = pio.match([pio.join(model_dir, "*.png")])
    for p in found:
        if "curve" in pio.basename(p) or "loss" in pio.basename(p) or "history" in pio.basename(p):
            return p
    return found[0] if found else None


# ----------------------------------------------------------------------------- headless check
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_chromium() -> Optional[str]:
    for name in ((os.environ.get("CHROMIUM"),) if os.environ.get("CHROMIUM") else ()) + CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class RenderCheck:
    images_loaded: int
    images_total: int
    title: str
    dom: str
    screenshot: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.images_total > 0 and self.images_loaded == self.images_total


def render_in_browser(report_dir: str, screenshot: Optional[str] = None, timeout: float = 90.0,
                      chromium: Optional[str] = None) -> RenderCheck:
    """Serve ``report_dir`` on 127.0.0.1, load its index.html in headless Chromium, and read back what
    the page's own script wrote into ``#render-check`` (images decoded / images on the page)."""
    import functools
    import re
    import subprocess
    import tempfile
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium, or set $CHROMIUM)")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=report_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{REPORT_FILE}"
    try:
        with tempfile.TemporaryDirectory(prefix="captionbeam-chromium-") as profile:
            base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
            dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True,
                                 timeout=timeout, check=True).stdout
            if screenshot:
                subprocess.run(base + ["--window-size=1280,1600", f"--screenshot={os.path.abspath(screenshot)}", url],
                               capture_output=True, text=True, timeout=timeout, check=True)
    finally:
        server.shutdown()
        server.server_close()
    m = re.search(r'id="render-check"[^>]*', dom)
    attrs = dict(re.findall(r'(data-images-[a-z]+)="(\d*)"', m.group(0))) if m else {}
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    return RenderCheck(images_loaded=int(attrs.get("data-images-loaded") or -1),
                       images_total=int(attrs.get("data-images-total") or -1),
                       title=html.unescape(title.group(1)) if title else "", dom=dom,
                       screenshot=screenshot if screenshot and os.path.exists(screenshot) else None)
