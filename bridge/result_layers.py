"""A finished job's result layer in the project, styled: the one loader of the dialogs and the algorithms.

The engine writes its result into a GeoPackage (which may hold the user's other layers) and says which
layer (``result["layer"]``, ``result["source"]``) and which ``.qml`` style it wrote beside. A dialog's
job adds that layer at once (``add_result_layer``); a Processing algorithm hands it to Processing, which
loads it when the run completes (``load_result_layer``, ``load_on_completion``). Detect's and NMS's
layers get the look of result_style.py either way.
"""
import os

from qgis.core import Qgis, QgsProcessingContext, QgsProcessingLayerPostProcessorInterface, QgsProject, QgsVectorLayer

from .messages import log, push
from .result_style import style_result_layer

# Processing keeps only a C++ pointer to a post-processor; the Python object must outlive the algorithm
# until its layers are loaded, maybe after later runs (batch). They are never dropped: a few bytes a run.
_STYLERS = []


class _ApplyStyle(QgsProcessingLayerPostProcessorInterface):
    """Processing loads result layers without their default style, so the .qml written beside is applied here."""

    def __init__(self, qml, style=None):
        super().__init__()
        self.qml = qml
        self.style = style   # style(layer, qml) of result_style.py (Detect's and NMS's look, the tiles'), else the qml

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        if self.style is not None:
            self.style(layer, self.qml)
        elif self.qml and os.path.exists(self.qml):
            layer.loadNamedStyle(self.qml)
            layer.triggerRepaint()


def load_result_layer(context, destination, result, style=style_result_layer):
    """The layer the engine wrote, as OUTPUT returns it and Processing loads it (styled) on completion.

    Processing registered the destination as given (a path, or the 'ogr:dbname=... table=...' of "Save to
    GeoPackage"); the layer to load is the engine's: the file when it holds that layer alone, else
    'path|layername=x' (a plain path would load the file's first layer). ``style``: result_style.py's look for it."""
    alone = result.get("written") == "created" and result["layer"] == os.path.splitext(
        os.path.basename(result["output"]))[0]
    value = result["output"] if alone else result["source"]
    loading = context.layersToLoadOnCompletion()
    if destination in loading:
        details = loading.pop(destination)
        if result.get("layer"):
            styler = _ApplyStyle(result.get("style"), style)
            _STYLERS.append(styler)
            details.setPostProcessor(styler)
        loading[value] = details
        context.setLayersToLoadOnCompletion(loading)
    return value


def load_on_completion(context, path, name, output_name, style=None):
    """Ask Processing to add the GeoPackage at ``path`` to the project (as the toolbox does for destinations),
    styled by ``style`` (result_style.py), else by the ``.qml`` beside the file."""
    if not path or context.project() is None:
        return
    details = QgsProcessingContext.LayerDetails(name, context.project(), output_name)
    # the style beside the file, never beside 'path|layername=x' (its splitext is the file's stem: another layer's)
    styler = _ApplyStyle(None if style else os.path.splitext(path.split("|")[0])[0] + ".qml", style)
    _STYLERS.append(styler)
    details.setPostProcessor(styler)
    context.addLayerToLoadOnCompletion(path, details)


def add_result_layer(task):
    """Add a finished job's result layer (a layer of its --out GeoPackage, which may hold other layers) to the
    project, styled as every Detect and NMS result is (result_style.py).

    Returns the output path and the layer (None when it cannot be opened)."""
    r = task.result or {}
    path = r.get("output") or task.args[task.args.index("--out") + 1]
    name = r.get("layer") or os.path.splitext(os.path.basename(path))[0]
    layer = QgsVectorLayer(r.get("source") or path, name, "ogr")
    if not layer.isValid():
        push(f"The result '{path}' cannot be opened as a layer.", Qgis.MessageLevel.Warning)
        return path, None
    log(f"Style of {name}: {style_result_layer(layer, r.get('style'))}.")
    QgsProject.instance().addMapLayer(layer)
    return path, layer
