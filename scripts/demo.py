"""The MaskForge demo: the motivating story, offline, on scenes the project generates.

1. a "source" scene of buildings and a "target" scene of a camp of tents (with true footprints);
2. train a base package on the source — "the pretrained building model";
3. detect tents on the target with it (before);
4. take the tents of the left part of the target as an analyst's labels, export chips,
   fine-tune the base package on them;
5. detect over the whole target (after), at the threshold training chose, NMS on;
6. assess both against the truth of the right part (never used for training).

Every step runs through the plugin's own Processing algorithms in a headless QGIS, exactly as
from the toolbox. Writes demo_output/: GeoPackages, the model package and its report,
before/after PNG maps, a QGIS project. `--quick` is the reduced version the tests run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsMapRendererParallelJob,  # noqa: E402
                       QgsMapSettings, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer)
from qgis.PyQt.QtCore import QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")


def engine(*args):
    run = subprocess.run([PY, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"demo: engine step {args[0]} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout)


def runtime_has_cuda():
    run = subprocess.run([PY, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True)
    return run.stdout.strip() == "True"


def start_qgis():
    app = QgsApplication([], False)
    app.initQgis()
    import processing
    from processing.core.Processing import Processing
    Processing.initialize()
    # One link per checkout: a link left by another checkout would load that checkout's code.
    import hashlib
    tag = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    plugins = Path(os.environ.get("TMPDIR", "/tmp")) / f"maskforge-demo-plugins-{tag}"
    plugins.mkdir(exist_ok=True)
    link = plugins / "maskforge"
    if not link.exists():
        link.symlink_to(ROOT)
    sys.path.insert(0, str(plugins))
    from maskforge.algorithms.provider import MaskForgeProvider
    provider = MaskForgeProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    return app, processing, provider


class Steps:
    def __init__(self):
        self.times = {}

    def run(self, name, processing, alg, params):
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        result = processing.run(alg, params)
        self.times[name] = round(time.monotonic() - t0, 1)
        return result


def split_truth(labels, out_dir, x_split):
    """The analyst's labels: the true tents whose centre lies left of x_split."""
    truth = QgsVectorLayer(str(labels), "truth", "ogr")
    left = out_dir / "labels_drawn.gpkg"
    import processing
    processing.run("native:extractbyexpression", {
        "INPUT": truth, "EXPRESSION": f"x(centroid($geometry)) < {x_split}", "OUTPUT": str(left)})
    return left


def render(raster, layers, extent, path, title):
    settings = QgsMapSettings()
    settings.setLayers(layers + [raster])
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(700, 700))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    painter = QPainter(image)
    painter.setFont(QFont("Sans", 16, QFont.Bold))
    painter.fillRect(0, 0, 700, 34, QColor(255, 255, 255, 210))
    painter.setPen(QColor("black"))
    painter.drawText(10, 25, title)
    painter.end()
    image.save(str(path))
    return image


def side_by_side(left, right, path):
    image = QImage(left.width() + right.width() + 10, left.height(), QImage.Format_ARGB32)
    image.fill(Qt.white)
    painter = QPainter(image)
    painter.drawImage(0, 0, left)
    painter.drawImage(left.width() + 10, 0, right)
    painter.end()
    image.save(str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "demo_output"))
    ap.add_argument("--quick", action="store_true", help="the reduced demo the tests run")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()
    # Sized for 2 CPU cores within the 15-minute budget; a GPU takes the Esri-sized network.
    source_size, target_size = (256, 384) if args.quick else (512, 512)
    epochs_base, epochs_tune = (3, 5) if args.quick else (5, 8)
    gpu = runtime_has_cuda()
    tile = 256 if gpu else 128
    # Everything else at the engine's defaults: it chooses the stride, anchors, input scale, learning rate,
    # monitor, patience and detection threshold from the data, and says why in each step's log.

    source = engine("sample", "--out", out / "source", "--size", source_size, "--seed", 1, "--kind", "buildings")
    target = engine("sample", "--out", out / "target", "--size", target_size, "--seed", 2, "--kind", "camp")
    app, processing, provider = start_qgis()
    steps = Steps()
    # BASE_MODEL is an enum index of maskforge:train (see algorithms/jobs.py): 2 = none, 1 = a package.

    steps.run("export source chips", processing, "maskforge:exporttrainingdata", {
        "INPUT_RASTER": source["raster"], "INPUT_LABELS": source["labels"], "TILE_SIZE_X": tile,
        "TILE_SIZE_Y": tile, "OUTPUT_FOLDER": str(out / "source_chips")})
    steps.run("train base (buildings) model", processing, "maskforge:train", {
        "INPUT_DATA": str(out / "source_chips"), "BASE_MODEL": 2, "EPOCHS": epochs_base,
        "OUTPUT_MODEL": str(out / "building_model")})
    base_pkg = out / "building_model" / "building_model.dlpk"

    before = out / "tents_before.gpkg"
    steps.run("detect with the base model", processing, "maskforge:detectobjects", {
        "INPUT_RASTER": target["raster"], "MODEL": str(base_pkg), "OUTPUT": str(before)})

    raster = QgsRasterLayer(target["raster"], "target camp")
    ext = raster.extent()
    x_split = ext.xMinimum() + 0.4 * ext.width()
    drawn = split_truth(target["labels"], out, x_split)
    train_area = QgsRectangle(ext.xMinimum(), ext.yMinimum(), x_split, ext.yMaximum())
    assess_area = f"{x_split},{ext.xMaximum()},{ext.yMinimum()},{ext.yMaximum()} [EPSG:32636]"
    steps.run("export tent chips (left 40 %)", processing, "maskforge:exporttrainingdata", {
        "INPUT_RASTER": target["raster"], "INPUT_LABELS": str(drawn), "TILE_SIZE_X": tile, "TILE_SIZE_Y": tile,
        "EXTENT": f"{train_area.xMinimum()},{train_area.xMaximum()},{train_area.yMinimum()},{train_area.yMaximum()} "
                  "[EPSG:32636]",
        "OUTPUT_FOLDER": str(out / "tent_chips")})
    steps.run("fine-tune on the tents", processing, "maskforge:train", {
        "INPUT_DATA": str(out / "tent_chips"), "BASE_MODEL": 1, "BASE_PACKAGE": str(base_pkg),
        "EPOCHS": epochs_tune, "OUTPUT_MODEL": str(out / "tent_model")})
    tuned_pkg = out / "tent_model" / "tent_model.dlpk"

    after = out / "tents_after.gpkg"
    steps.run("detect with the fine-tuned model", processing, "maskforge:detectobjects", {
        "INPUT_RASTER": target["raster"], "MODEL": str(tuned_pkg), "OUTPUT": str(after)})

    scores = {}
    for name, detections in (("before", before), ("after", after)):
        result = steps.run(f"assess {name} (right 60 %)", processing, "maskforge:computeaccuracy", {
            "DETECTIONS": str(detections), "GROUND_TRUTH": target["labels"], "IOU_THRESHOLD": 0.5,
            "EXTENT": assess_area, "OUTPUT_FOLDER": str(out / f"accuracy_{name}")})
        scores[name] = result

    # Maps and the project
    truth_layer = QgsVectorLayer(target["labels"], "true tents", "ogr")
    layers = {n: QgsVectorLayer(str(p), f"tents {n} fine-tuning", "ogr") for n, p in (("before", before), ("after", after))}
    for layer in layers.values():
        layer.loadDefaultStyle()
    zoom = QgsRectangle(x_split, ext.yMinimum() + 0.3 * ext.height(), x_split + 0.45 * ext.width(),
                        ext.yMinimum() + 0.75 * ext.height())
    images = [render(raster, [layers[n]], zoom, out / f"map_{n}.png",
                     f"{n} fine-tuning: {int(scores[n]['TP'] + scores[n]['FP'])} found, F1 {scores[n]['F1'] or 0:.2f}")
              for n in ("before", "after")]
    side_by_side(*images, out / "before_after.png")
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32636"))
    for layer in [raster, truth_layer, QgsVectorLayer(str(drawn), "labels drawn", "ogr"), *layers.values()]:
        project.addMapLayer(layer)
    project.write(str(out / "maskforge_demo.qgz"))

    tuned = json.loads((out / "tent_model" / "tent_model.emd").read_text())
    backbone = tuned["ModelParameters"]["backbone"]
    summary = {
        "device": "GPU" if gpu else "CPU", "backbone": backbone,
        "chosen": {k: c["reason"] for k, c in (tuned.get("Choices") or {}).items()},
        "true_tents_in_assessed_part": int(scores["after"]["TP"] + scores["after"]["FN"]),
        "before": {k: scores["before"][k] for k in ("TP", "FP", "FN", "PRECISION", "RECALL", "F1")},
        "after": {k: scores["after"][k] for k in ("TP", "FP", "FN", "PRECISION", "RECALL", "F1")},
        "seconds_per_step": steps.times, "total_seconds": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n== MaskForge demo summary")
    print(f"Tents in the assessed part: {summary['true_tents_in_assessed_part']}")
    def figure(v):
        return "n/a" if v is None else f"{v:.2f}"   # precision of an empty detection set is undefined
    for n in ("before", "after"):
        s = summary[n]
        print(f"{n:>6} fine-tuning: found {int(s['TP'] + s['FP'])} (correct {int(s['TP'])}), "
              f"precision {figure(s['PRECISION'])}, recall {figure(s['RECALL'])}, F1 {figure(s['F1'])}")
    print("Chosen by the engine for the fine-tuning:")
    for reason in summary["chosen"].values():
        print(f"  - {reason}")
    for name, seconds in steps.times.items():
        print(f"  {seconds:7.1f} s  {name}")
    print(f"total {summary['total_seconds']} s on {summary['device']} ({backbone}); outputs in {out}")
    QgsApplication.processingRegistry().removeProvider(provider)
    app.exitQgis()


if __name__ == "__main__":
    main()
