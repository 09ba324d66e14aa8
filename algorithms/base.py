"""What every MaskForge Processing algorithm shares: running its engine step.

``run_step`` hands the step to ``runner.run_job`` (the same runner the
toolbar's background tasks use) and maps its events onto the Processing
feedback: progress, log lines, cancel.
"""
import os

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException

from .. import settings
from ..runner import JobCancelled, JobError, run_job


class MaskForgeAlgorithm(QgsProcessingAlgorithm):

    def createInstance(self):
        return type(self)()

    def group(self):
        return ""

    def groupId(self):
        return ""

    def run_step(self, step, args, feedback):
        def on_event(event):
            kind = event.get("event")
            if kind == "progress":
                feedback.setProgress(event.get("percent", 0))
                if event.get("message"):
                    feedback.setProgressText(event["message"])
            elif kind == "log":
                if event.get("level") == "warning":
                    feedback.pushWarning(event.get("message", ""))
                else:
                    feedback.pushInfo(event.get("message", ""))
            elif kind == "metric":
                feedback.pushInfo(", ".join(f"{k}={v}" for k, v in event.items() if k != "event"))

        try:
            return run_job(settings.runtime_python(), step, args, on_event=on_event,
                           is_cancelled=feedback.isCanceled)
        except JobCancelled as exc:
            feedback.pushInfo(str(exc))   # the engine says what was kept (training keeps its best epoch)
            return {}
        except JobError as exc:
            if exc.stderr_tail and exc.kind in ("internal", "crash"):
                feedback.pushDebugInfo(exc.stderr_tail)
            raise QgsProcessingException(str(exc)) from None


def absolute(path):
    """The worker runs in the plugin folder: hand it absolute paths."""
    if not path:
        return path
    file_part, sep, options = str(path).partition("|")
    if os.path.exists(file_part) or not os.path.isabs(file_part) and "://" not in file_part:
        file_part = os.path.abspath(file_part)
    return file_part + sep + options


def source_path(alg, parameters, name, context, feedback):
    """A path the engine (OGR) can read for a feature-source parameter.

    Memory layers, selections and non-file providers are written to a temporary
    GeoPackage by QGIS first; file layers are used in place.
    """
    path, layer_name = alg.parameterAsCompatibleSourceLayerPathAndLayerName(
        parameters, name, context, ["gpkg", "shp", "geojson", "json", "fgb", "sqlite"], "gpkg", feedback)
    if not path:
        return None
    return absolute(f"{path}|layername={layer_name}" if layer_name else path)


def extent_args(alg, parameters, name, context, crs):
    """``--extent xmin,ymin,xmax,ymax`` in the raster's CRS, or nothing when the extent is unset."""
    if not parameters.get(name):
        return []
    e = alg.parameterAsExtent(parameters, name, context, crs)
    if e.isNull():
        return []
    return ["--extent", f"{e.xMinimum()},{e.yMinimum()},{e.xMaximum()},{e.yMaximum()}"]


def raster_path(alg, parameters, name, context):
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"Choose a raster layer for '{name}'.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"The raster '{layer.name()}' comes from the '{layer.providerType()}' provider; MaskForge reads "
            "rasters through GDAL files. Save it as a GeoTIFF first (Export > Save As).")
    return layer, absolute(layer.source())
