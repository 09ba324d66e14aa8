"""Result layers of the assessment algorithms: loaded into the project when the run completes, styled."""
import os

from qgis.core import QgsProcessingContext, QgsProcessingLayerPostProcessorInterface

# Processing keeps only a C++ pointer to a post-processor; the Python object must outlive the algorithm
# until its layers are loaded, maybe after later runs (batch). They are never dropped: a few bytes a run.
_STYLERS = []


class _ApplyStyle(QgsProcessingLayerPostProcessorInterface):
    """Processing loads result layers without their default style, so the .qml written beside is applied here."""

    def __init__(self, qml, detections=False):
        super().__init__()
        self.qml = qml
        self.detections = detections   # Detect's and NMS's: the toolbar's look (result_style.py)

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        if self.detections:
            from .result_style import style_result_layer
            style_result_layer(layer, self.qml)
        elif self.qml and os.path.exists(self.qml):
            layer.loadNamedStyle(self.qml)
            layer.triggerRepaint()


def load_result_layer(context, destination, result):
    """The layer the engine wrote, as OUTPUT returns it and Processing loads it (styled) on completion.

    Processing registered the destination as given (a path, or the 'ogr:dbname=... table=...' of "Save to
    GeoPackage"); the layer to load is the engine's: the file when it holds that layer alone, else
    'path|layername=x' (a plain path would load the file's first layer)."""
    alone = result.get("written") == "created" and result["layer"] == os.path.splitext(
        os.path.basename(result["output"]))[0]
    value = result["output"] if alone else result["source"]
    loading = context.layersToLoadOnCompletion()
    if destination in loading:
        details = loading.pop(destination)
        if result.get("layer"):
            styler = _ApplyStyle(result.get("style"), detections=True)
            _STYLERS.append(styler)
            details.setPostProcessor(styler)
        loading[value] = details
        context.setLayersToLoadOnCompletion(loading)
    return value


def load_on_completion(context, path, name, output_name):
    """Ask Processing to add the GeoPackage at ``path`` to the project (as the toolbox does for destinations)."""
    if not path or context.project() is None:
        return
    details = QgsProcessingContext.LayerDetails(name, context.project(), output_name)
    styler = _ApplyStyle(os.path.splitext(path)[0] + ".qml")
    _STYLERS.append(styler)
    details.setPostProcessor(styler)
    context.addLayerToLoadOnCompletion(path, details)
