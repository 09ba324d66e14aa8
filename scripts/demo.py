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
                       QgsMapSettings, QgsProcessingException, QgsProcessingFeedback, QgsProject, QgsRasterLayer,
                       QgsRectangle, QgsVectorLayer)
from qgis.PyQt.QtCore import QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter  # noqa: E402

from progress_console import Console, about, machine, metric_from_text  # scripts/ holds this file  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
# Seconds per step of the demo for 2 idle CPU cores. --quick: the trainings from the idle cost of a training
# step (about 1.7 s, see README) and the fine-tuning/base ratio measured on a loaded run (2.3x: the 2x input
# scale); the rest as measured. Full: --quick's times times chips x epochs (source 169 chips against 25 and 5
# epochs against 3; the camp 1.8x the area and 8 epochs against 5). For the announcement they scale with the
# cores (up to 8); each step's end rescales the rest by how the finished steps compared, and a running step's
# own time left comes from the engine's rate of progress.
REFERENCE_CORES = 2
REFERENCE_SECONDS = {
    "quick": {"generate the scenes": 10, "export source chips": 10, "train base (buildings) model": 75,
              "detect with the base model": 15, "export tent chips (left 40 %)": 10, "fine-tune on the tents": 170,
              "detect with the fine-tuned model": 15, "assess before (right 60 %)": 10,
              "assess after (right 60 %)": 10, "maps and the QGIS project": 5},
    "full": {"generate the scenes": 15, "export source chips": 15, "train base (buildings) model": 850,
             "detect with the base model": 25, "export tent chips (left 40 %)": 10, "fine-tune on the tents": 480,
             "detect with the fine-tuned model": 25, "assess before (right 60 %)": 10,
             "assess after (right 60 %)": 10, "maps and the QGIS project": 5},
}


def runtime_gpu():
    """The CUDA GPU's name the runtime sees, or '' (the QGIS side never imports torch)."""
    run = subprocess.run([PY, "-c", "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() "
                          "else '')"], capture_output=True, text=True)
    return run.stdout.strip()


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


class PrintingFeedback(QgsProcessingFeedback):
    """Processing's feedback on the console: the engine's events as the algorithms relay them
    (algorithms/base.py: progress -> setProgress + setProgressText, log -> pushInfo/pushWarning,
    metric -> pushInfo 'epoch=1, train_loss=...'), drawn by progress_console."""

    def __init__(self, console):
        super().__init__()
        self.bar = console.progress()
        self.progressChanged.connect(self.bar.update)

    def setProgressText(self, text):
        self.bar.update(self.progress(), text)

    def pushInfo(self, info):
        metric = metric_from_text(info)
        if metric is not None:
            self.bar.epoch(metric)
        elif not info.startswith("Results: "):     # processing.run's dump of the outputs: the summary says it
            self.bar.write(f"  {info}")

    def pushWarning(self, warning):
        self.bar.write(f"  warning: {warning}")

    def reportError(self, error, fatalError=False):
        self.bar.write(f"  error: {error}")

    def pushDebugInfo(self, info):                  # the worker's stderr tail after a crash
        self.bar.write(info)


class Steps:
    """Each step a console phase; Ctrl-C cancels the running one's feedback (the runner stops the worker
    cleanly: a training keeps its best epoch) and the console then says what finished."""

    def __init__(self, console, processing, run_job):
        self.console, self.processing, self.run_job = console, processing, run_job
        self.feedback = None
        console.stop_on_interrupt("the running step", on_stop=lambda: self.feedback and self.feedback.cancel())

    def run(self, name, alg, params, output=None):
        with self.console.phase(name, output=output):
            self.feedback = PrintingFeedback(self.console)
            try:
                return self.processing.run(alg, params, feedback=self.feedback)
            except QgsProcessingException as exc:     # its message is the algorithm's, for the user
                if self.console.stop_requested():
                    raise KeyboardInterrupt from None
                sys.exit(f"demo: step '{name}' failed: {exc}")

    def engine(self, *args):
        """An engine step outside Processing (the sample scenes) through the plugin's runner."""
        from maskforge.bridge.runner import JobCancelled, JobError
        bar = self.console.progress()
        try:
            return self.run_job(PY, args[0], args[1:], on_event=bar.event, is_cancelled=self.console.stop_requested)
        except JobCancelled:
            raise KeyboardInterrupt from None
        except JobError as exc:
            sys.exit(f"demo: engine step {args[0]} failed: {exc}")


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


def announce(console, args, out, gpu):
    """What a new user needs before a long run: what it does, how long on this machine, what it writes."""
    cores, cpu = machine()
    mode = "quick" if args.quick else "full"
    reference = REFERENCE_SECONDS[mode]
    scale = 1.0 if gpu else REFERENCE_CORES / min(max(cores, 1), 8)
    total = console.plan({name: seconds * scale for name, seconds in reference.items()})
    say = console.say
    say(f"MaskForge demo{' (reduced: --quick)' if args.quick else ''}: trains a building detector, fine-tunes it on "
        "the tents an analyst drew")
    say("in part of a camp, and assesses both on the part it never saw. Offline, through the plugin's Processing "
        "algorithms.")
    say(f"Machine: {cpu}" + (f", GPU {gpu}" if gpu else ", no CUDA GPU (training runs on the CPU)") + ".")
    if gpu:
        say(f"Expected: at most {about(total)} (measured on {REFERENCE_CORES} CPU cores; not yet on a GPU, "
            "which is faster): each step's end updates the time left.")
    else:
        scaled = "" if scale == 1 else f" ({about(sum(reference.values()))} on {REFERENCE_CORES} cores, scaled)"
        say(f"Expected: {about(total)} in all{scaled}; each step's end updates the time left.")
    say(f"It writes {out}/: the building and tent model packages with their reports (model_metrics.html),")
    say("detections before and after fine-tuning (GeoPackages, styled), before_after.png and the QGIS project "
        "maskforge_demo.qgz.")
    say("Ctrl-C stops the running step cleanly and says what finished.")
    say()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "demo_output"))
    ap.add_argument("--quick", action="store_true", help="the reduced demo the tests run")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    console = Console("demo", stream=sys.stdout,
                      partial=f"{out} (the finished steps' outputs; a stopped training keeps its best epoch's package)")
    with console.session():
        run_demo(console, args, out)


def run_demo(console, args, out):
    gpu = runtime_gpu()
    announce(console, args, out, gpu)
    # Sized for 2 CPU cores within the 15-minute budget; a GPU takes the Esri-sized network.
    source_size, target_size = (256, 384) if args.quick else (512, 512)
    epochs_base, epochs_tune = (3, 5) if args.quick else (5, 8)
    tile = 256 if gpu else 128
    # Everything else at the engine's defaults: it chooses the stride, anchors, input scale, learning rate,
    # monitor, patience and detection threshold from the data, and says why in each step's log.

    app, processing, provider = start_qgis()
    from maskforge.bridge.runner import run_job
    steps = Steps(console, processing, run_job)
    with console.phase("generate the scenes", output=out):
        source = steps.engine("sample", "--out", out / "source", "--size", source_size, "--seed", 1,
                              "--kind", "buildings")
        target = steps.engine("sample", "--out", out / "target", "--size", target_size, "--seed", 2, "--kind", "camp")
    # BASE_MODEL is an enum index of maskforge:train (see algorithms/jobs.py): 2 = none, 1 = a package.

    steps.run("export source chips", "maskforge:exporttrainingdata", {
        "INPUT_RASTER": source["raster"], "INPUT_LABELS": source["labels"], "TILE_SIZE_X": tile,
        "TILE_SIZE_Y": tile, "OUTPUT_FOLDER": str(out / "source_chips")})
    steps.run("train base (buildings) model", "maskforge:train", {
        "INPUT_DATA": str(out / "source_chips"), "BASE_MODEL": 2, "EPOCHS": epochs_base,
        "OUTPUT_MODEL": str(out / "building_model")}, output=out / "building_model")
    base_pkg = out / "building_model" / "building_model.dlpk"

    before = out / "tents_before.gpkg"
    steps.run("detect with the base model", "maskforge:detectobjects", {
        "INPUT_RASTER": target["raster"], "MODEL": str(base_pkg), "OUTPUT": str(before)}, output=before)

    raster = QgsRasterLayer(target["raster"], "target camp")
    ext = raster.extent()
    x_split = ext.xMinimum() + 0.4 * ext.width()
    drawn = split_truth(target["labels"], out, x_split)
    train_area = QgsRectangle(ext.xMinimum(), ext.yMinimum(), x_split, ext.yMaximum())
    assess_area = f"{x_split},{ext.xMaximum()},{ext.yMinimum()},{ext.yMaximum()} [EPSG:32636]"
    steps.run("export tent chips (left 40 %)", "maskforge:exporttrainingdata", {
        "INPUT_RASTER": target["raster"], "INPUT_LABELS": str(drawn), "TILE_SIZE_X": tile, "TILE_SIZE_Y": tile,
        "EXTENT": f"{train_area.xMinimum()},{train_area.xMaximum()},{train_area.yMinimum()},{train_area.yMaximum()} "
                  "[EPSG:32636]",
        "OUTPUT_FOLDER": str(out / "tent_chips")})
    steps.run("fine-tune on the tents", "maskforge:train", {
        "INPUT_DATA": str(out / "tent_chips"), "BASE_MODEL": 1, "BASE_PACKAGE": str(base_pkg),
        "EPOCHS": epochs_tune, "OUTPUT_MODEL": str(out / "tent_model")}, output=out / "tent_model")
    tuned_pkg = out / "tent_model" / "tent_model.dlpk"

    after = out / "tents_after.gpkg"
    steps.run("detect with the fine-tuned model", "maskforge:detectobjects", {
        "INPUT_RASTER": target["raster"], "MODEL": str(tuned_pkg), "OUTPUT": str(after)}, output=after)

    scores = {}
    for name, detections in (("before", before), ("after", after)):
        result = steps.run(f"assess {name} (right 60 %)", "maskforge:computeaccuracy", {
            "DETECTIONS": str(detections), "GROUND_TRUTH": target["labels"], "IOU_THRESHOLD": 0.5,
            "EXTENT": assess_area, "OUTPUT_FOLDER": str(out / f"accuracy_{name}")})
        scores[name] = result

    with console.phase("maps and the QGIS project", output=out / "maskforge_demo.qgz"):
        truth_layer = QgsVectorLayer(target["labels"], "true tents", "ogr")
        layers = {n: QgsVectorLayer(str(p), f"tents {n} fine-tuning", "ogr")
                  for n, p in (("before", before), ("after", after))}
        for layer in layers.values():
            layer.loadDefaultStyle()
        zoom = QgsRectangle(x_split, ext.yMinimum() + 0.3 * ext.height(), x_split + 0.45 * ext.width(),
                            ext.yMinimum() + 0.75 * ext.height())
        images = [render(raster, [layers[n]], zoom, out / f"map_{n}.png",
                         f"{n} fine-tuning: {int(scores[n]['TP'] + scores[n]['FP'])} found, "
                         f"F1 {scores[n]['F1'] or 0:.2f}")
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
        "seconds_per_step": console.seconds(), "total_seconds": round(time.monotonic() - console.started, 1),
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
    for name, seconds in summary["seconds_per_step"].items():
        print(f"  {seconds:7.1f} s  {name}")
    print(f"total {summary['total_seconds']} s on {summary['device']} ({backbone}); outputs in {out}")
    opens = "make qgis" if out == ROOT / "demo_output" else f"qgis --project {out / 'maskforge_demo.qgz'}"
    print(f"\nNext: `{opens}` opens the result in QGIS with the plugin enabled (true tents, the drawn labels, "
          "detections before and after);")
    print(f"      {out / 'before_after.png'} shows both side by side, {out / 'tent_model' / 'model_metrics.html'} "
          "the training report.")
    QgsApplication.processingRegistry().removeProvider(provider)
    app.exitQgis()


if __name__ == "__main__":
    main()
