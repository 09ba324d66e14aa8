"""The training report: model_metrics.html, a loss graph and sample predictions (PNG, drawn with Pillow)."""
import html
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .bands import to_network_input


def _loss_graph(history, path, size=(640, 360)):
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 20, h - 40
    series = {"train_loss": (31, 119, 180), "valid_loss": (255, 127, 14)}
    values = [r[k] for r in history for k in series if r.get(k) is not None]
    if not values:
        img.save(path)
        return
    lo, hi = 0.0, max(values) * 1.05 or 1.0
    n = max(1, len(history) - 1)
    d.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    for i in range(5):
        y = bottom - (bottom - top) * i / 4
        d.line([left, y, right, y], fill=(235, 235, 235))
        d.text((5, y - 6), f"{lo + (hi - lo) * i / 4:.3f}", fill="black")
    for i, r in enumerate(history):
        x = left + (right - left) * i / n
        d.text((x - 4, bottom + 6), str(r["epoch"]), fill="black")
    d.text(((left + right) / 2 - 15, h - 18), "epoch", fill="black")
    for k, colour in series.items():
        pts = [(left + (right - left) * i / n, bottom - (bottom - top) * (r[k] - lo) / (hi - lo))
               for i, r in enumerate(history) if r.get(k) is not None]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for i, (k, colour) in enumerate(series.items()):
        d.line([right - 150, top + 12 + 16 * i, right - 130, top + 12 + 16 * i], fill=colour, width=3)
        d.text((right - 125, top + 6 + 16 * i), k.replace("_", " "), fill="black")
    img.save(path)


def _pr_graph(curve, threshold, path, size=(360, 360)):
    """Precision (y) against recall (x) on the validation chips, the chosen threshold's point marked."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 45, w - 15, 15, h - 40
    d.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    for i in range(5):
        f = i / 4
        y, x = bottom - (bottom - top) * f, left + (right - left) * f
        d.line([left, y, right, y], fill=(235, 235, 235))
        d.text((8, y - 6), f"{f:.2f}", fill="black")
        d.text((x - 10, bottom + 6), f"{f:.2f}", fill="black")
    d.text(((left + right) / 2 - 15, h - 18), "recall", fill="black")
    d.text((left + 4, top + 2), "precision", fill="black")

    def xy(c):
        return left + (right - left) * c[2], bottom - (bottom - top) * c[1]
    pts = [xy(c) for c in curve]
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    at = [c for c in curve if c[0] >= threshold]
    if at:
        x, y = xy(at[-1])
        d.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(214, 39, 40), width=3)
        d.text((min(x + 8, right - 110), max(y - 18, top)), f"threshold {threshold:g}", fill=(214, 39, 40))
    img.save(path)


def _sample(chip, pred, normalization, path, threshold=0.5):
    rgb = (to_network_input(chip.image, normalization).transpose(1, 2, 0) * 255).astype(np.uint8)
    truth = np.zeros(rgb.shape[:2], bool)
    for _, m in chip.labels:
        truth |= m > 0
    out = rgb.copy()
    out[truth] = (0.6 * out[truth] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
    img = Image.fromarray(out)
    d = ImageDraw.Draw(img)
    for box, score in zip(pred["boxes"], pred["scores"]):
        if score >= threshold:
            d.rectangle([float(v) for v in box], outline=(255, 0, 0))
    img.save(path)


def _split_sentence(emd):
    """What the validation metrics below were measured on (core.split), in words."""
    record = emd.get("ValidationSplit") or {}
    n_train, n_val = len(emd.get("TrainingChips") or []), len(emd.get("ValidationChips") or [])
    if record.get("Method") == "spatial":
        return (f"Held out in space: {record.get('Reason')}. The chips are listed by name in the package's "
                f".emd (TrainingChips, ValidationChips), so anyone can check that no two overlap.")
    return (f"No validation ({record.get('Reason') or 'none recorded'}): all {n_train} chips trained"
            + (f" and {n_val} validated" if n_val else "") + ". The figures below are not measured on unseen "
            "ground, and the detection threshold was not chosen from the data. Label a second area to have one.")


def write_report(out_dir, name, emd, chips, preds, normalization):
    """Write the report files; returns their paths (they also go into the .dlpk)."""
    out = Path(out_dir)
    history = emd.get("TrainingHistory") or []
    loss_png = out / "loss_graph.png"
    _loss_graph(history, loss_png)
    threshold = float(emd.get("DetectionThreshold") or 0.5)
    curve = emd.get("PrecisionRecall") or []
    pr_png = out / "precision_recall.png"
    _pr_graph(curve, threshold, pr_png)
    samples = []
    for i, (chip, pred) in enumerate(zip(chips, preds)):
        p = out / f"sample_{i}.png"
        _sample(chip, pred, normalization, p, threshold)
        samples.append(p)
    chosen = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(c.get('value')))}</td>"
                     f"<td>{html.escape(str(c.get('reason')))}</td></tr>" for k, c in (emd.get("Choices") or {}).items())
    best = emd.get("Metrics") or {}
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in (emd.get("TrainingParameters") or {}).items())
    hist = "".join("<tr>" + "".join(f"<td>{r.get(k) if r.get(k) is not None else ''}</td>" for k in
                                    ("epoch", "train_loss", "valid_loss", "bbox_ap", "mask_ap", "mask_ap50", "lr", "seconds"))
                   + "</tr>" for r in history)
    per_class = "".join(
        f"<tr><td>{v}</td><td>{html.escape(str(c.get('name')))}</td><td>{c.get('bbox_ap')}</td>"
        f"<td>{c.get('mask_ap')}</td><td>{c.get('mask_ap50')}</td></tr>"
        for v, c in (best.get("per_class") or {}).items())
    imgs = "".join(f'<img src="{p.name}" width="256" style="margin:4px">' for p in samples)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(name)} — MaskForge training report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style></head>
<body><h1>{html.escape(name)}</h1>
<p>Mask R-CNN, backbone <b>{html.escape(str((emd.get('ModelParameters') or {}).get('backbone')))}</b>,
base model <b>{html.escape(str(emd.get('BaseModel')))}</b>, best epoch <b>{emd.get('BestEpoch')}</b>
of {len(history)}, training time {emd.get('TrainingSeconds')} s.</p>
<h2>Validation</h2><p>{html.escape(_split_sentence(emd))}</p>
<h2>Average precision per class (validation chips, COCO AP@[.5:.95])</h2>
<table><tr><th>value</th><th>class</th><th>box AP</th><th>mask AP</th><th>mask AP50</th></tr>{per_class}</table>
<h2>Chosen from the data</h2><p>What was left empty, the engine chose; each can be set by hand.</p>
<table><tr><th>setting</th><th>value</th><th>why</th></tr>{chosen}</table>
<h2>Precision and recall (validation chips, mask IoU 0.5)</h2>
<p>Detect Objects uses the threshold <b>{threshold:g}</b> unless another is set.</p><img src="{pr_png.name}">
<h2>Loss</h2><img src="{loss_png.name}">
<h2>Epochs</h2><table><tr><th>epoch</th><th>train loss</th><th>valid loss</th><th>box AP</th><th>mask AP</th>
<th>mask AP50</th><th>lr</th><th>s</th></tr>{hist}</table>
<h2>Sample results</h2><p>Validation chips: labels tinted green, predictions (score ≥ {threshold:g}) boxed red.</p>{imgs}
<h2>Parameters</h2><table>{rows}</table>
</body></html>"""
    report = out / "model_metrics.html"
    report.write_text(page)
    return [report, loss_png, pr_png, *samples]
