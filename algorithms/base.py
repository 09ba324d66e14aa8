"""What every MaskForge Processing algorithm shares: running its engine step.

``run_step`` hands the step to ``runner.run_job`` (the same runner the
toolbar's background tasks use) and maps its events onto the Processing
feedback: progress, log lines, cancel.
"""
from qgis.core import QgsProcessingAlgorithm, QgsProcessingException

from ..bridge import settings
from ..bridge.runner import JobCancelled, JobError, run_job
from ..bridge.tasks import release_heavy_slot, wait_for_heavy_slot
from ..core.contract.invalid import InvalidInput
from ..core.contract.params import absolute
from ..bridge.layers import area_extent, raster_values


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

        holds_slot = False
        try:
            # one training or detection at a time, whether started here or from a toolbar dialog
            holds_slot = wait_for_heavy_slot(step, feedback.isCanceled, feedback.pushInfo)
            return run_job(settings.runtime_python(), step, args, on_event=on_event,
                           is_cancelled=feedback.isCanceled, env=settings.job_env())
        except JobCancelled as exc:
            feedback.pushInfo(str(exc))   # the engine says what was kept (training keeps its best epoch)
            return {}
        except JobError as exc:
            if exc.stderr_tail and exc.kind in ("internal", "crash"):
                feedback.pushDebugInfo(exc.stderr_tail)
            raise QgsProcessingException(str(exc)) from None
        finally:
            if holds_slot:
                release_heavy_slot()


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


def extent_value(alg, parameters, name, context, crs):
    """``(xmin, ymin, xmax, ymax)`` in the raster's CRS, or None when the extent is unset."""
    if not parameters.get(name):
        return None
    e = alg.parameterAsExtent(parameters, name, context, crs)
    if e.isNull():
        return None
    return (e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum())


def check(job, *facts):
    """``job.check(*facts)`` (core/contract/), a refusal turned into the Processing exception."""
    try:
        return job.check(*facts)
    except InvalidInput as exc:
        raise QgsProcessingException(str(exc)) from None


def job_args(step, values):
    """(the job, its engine argv) of ``values`` (core/contract/), a refusal turned into the Processing exception."""
    try:
        job = step.of(values)
        return job, [str(a) for a in job.to_args()]
    except InvalidInput as exc:
        raise QgsProcessingException(str(exc)) from None


def gpkg_output(alg, parameters, name, context, feedback):
    """(the destination as Processing registered it, what the engine's --out gets) of a vector destination:
    a file, or "Save to GeoPackage..." with a layer name (read by the engine); other formats become a .gpkg."""
    destination = alg.parameterAsOutputLayer(parameters, name, context)
    if destination.startswith("ogr:"):
        return destination, destination
    out = absolute(destination)
    if not out.split("|")[0].lower().endswith(".gpkg"):
        out = out.split("|")[0].rsplit(".", 1)[0] + ".gpkg"
        feedback.pushInfo(f"The result is written as a GeoPackage: {out}")
    return destination, out


def raster_layer(alg, parameters, name, context):
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"Choose a raster layer for '{name}'.")
    return layer


def engine_raster_values(layer, values, feedback, model=None, default_extent=None):
    """``values`` with INPUT_RASTER, EXTENT and CELL_SIZE as the engine reads ``layer`` (layers.py):
    a web layer becomes a GDAL service description, or a GeoTIFF QGIS rendered."""
    try:
        return raster_values(layer, values, model, default_extent, feedback)
    except InvalidInput as exc:
        raise QgsProcessingException(str(exc)) from None


def source_extent(alg, parameters, name, context, layer):
    """The extent of a feature-source parameter in ``layer``'s CRS (a web layer's default area), or None."""
    return area_extent(alg.parameterAsSource(parameters, name, context), layer)
