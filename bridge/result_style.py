"""One look for Detect's and NMS's result layers: colour by class, Confidence visible, saved with the layer.

The engine writes a categorized ``.qml`` (colours by class) beside its output but knows nothing of
QGIS; here that style is completed with what an analyst triages by — the Confidence — as fill
opacity and outline width (data-defined, so it needs no classes of its own) and, at large scales,
as a label. The style is then stored in the GeoPackage (its ``layer_styles`` table, as the default)
so the layer looks the same wherever it is opened, and rewritten to the ``.qml`` beside.
"""
import os

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalLayerSettings, QgsProperty,
                       QgsRendererCategory, QgsSingleSymbolRenderer, QgsSymbolLayer, QgsTextFormat,
                       QgsVectorLayerSimpleLabeling)
from qgis.PyQt.QtGui import QColor

CLASS_FIELDS = ("classvalue", "value", "class")
CONFIDENCE_FIELDS = ("confidence", "score", "scores", "probability", "prob")
# The engine's palette (core/chips.py's, not imported: core.chips pulls numpy and rasterio into QGIS's process).
PALETTE = [(255, 0, 0), (0, 170, 255), (255, 200, 0), (0, 200, 80), (200, 0, 255),
           (255, 120, 0), (0, 255, 220), (255, 0, 140), (120, 80, 0), (140, 140, 255)]
# Fill alpha 30..200 and outline 0.2..1.0 mm from Confidence 0..1: faint, thin outlines are the doubtful ones.
FILL_EXPRESSION = 'set_color_part(@symbol_color, \'alpha\', 30 + 170 * coalesce("{f}", 0))'
WIDTH_EXPRESSION = '0.2 + 0.8 * coalesce("{f}", 0)'
# Labels only when zoomed in enough to read them (objects are metres across): 1:2,500 and closer.
LABEL_MIN_SCALE = 2500
STYLE_NAME = "MaskForge"


def field_named(layer, wanted):
    """The layer's field whose name (any case) is the first of ``wanted``, else ''."""
    names = {f.name().lower(): f.name() for f in layer.fields()}
    return next((names[n] for n in wanted if n in names), "")


def _categorized(layer, class_field):
    """The layer's categorized renderer on ``class_field`` (the engine's .qml), else one made from its values."""
    renderer = layer.renderer()
    if isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute().lower() == class_field.lower():
        return renderer.clone()
    index = layer.fields().indexOf(class_field)
    values = sorted(layer.uniqueValues(index), key=lambda v: (str(type(v)), v)) if index >= 0 else []
    names = {}
    name_field = field_named(layer, ("class", "classname"))
    if name_field and name_field != class_field:
        for feature in layer.getFeatures():
            names.setdefault(feature[class_field], feature[name_field])
    categories = []
    for i, value in enumerate(values):
        try:
            r, g, b = PALETTE[(int(value) - 1) % len(PALETTE)]
        except (TypeError, ValueError):
            r, g, b = PALETTE[i % len(PALETTE)]
        symbol = QgsFillSymbol.createSimple({"color": f"{r},{g},{b},70", "outline_color": f"{r},{g},{b},255",
                                             "outline_width": "0.5", "outline_width_unit": "MM"})
        categories.append(QgsRendererCategory(value, symbol, str(names.get(value, value))))
    return QgsCategorizedSymbolRenderer(class_field, categories)


def _with_confidence(symbol, confidence):
    for symbol_layer in symbol.symbolLayers():
        symbol_layer.setDataDefinedProperty(QgsSymbolLayer.Property.FillColor,
                                            QgsProperty.fromExpression(FILL_EXPRESSION.format(f=confidence)))
        symbol_layer.setDataDefinedProperty(QgsSymbolLayer.Property.StrokeWidth,
                                            QgsProperty.fromExpression(WIDTH_EXPRESSION.format(f=confidence)))


def _labels(confidence, expression=None, min_scale=LABEL_MIN_SCALE):
    settings = QgsPalLayerSettings()
    settings.fieldName = expression or f'format_number("{confidence}", 2)'
    settings.isExpression = True
    settings.scaleVisibility = bool(min_scale)
    settings.minimumScale = min_scale   # QGIS: the most zoomed-out scale at which labels show
    settings.maximumScale = 0
    text = QgsTextFormat()
    text.setSize(8)
    text.setColor(QColor(20, 20, 20))
    buffer = text.buffer()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    text.setBuffer(buffer)
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def style_result_layer(layer, qml=None, save=True):
    """Style a Detect or NMS result ``layer`` (after the engine's ``qml`` when given); returns what was done.

    ``save``: store the style in the GeoPackage as the layer's default and rewrite ``qml``, so the
    layer opened later (another project, the Browser) looks the same."""
    if qml and os.path.exists(qml):
        layer.loadNamedStyle(qml)
    class_field = field_named(layer, CLASS_FIELDS)
    confidence = field_named(layer, CONFIDENCE_FIELDS)
    if not class_field:
        return "no class field: QGIS's default style"
    renderer = _categorized(layer, class_field)
    if confidence:
        for i, category in enumerate(renderer.categories()):
            symbol = category.symbol().clone()
            _with_confidence(symbol, confidence)
            renderer.updateCategorySymbol(i, symbol)
        layer.setLabeling(_labels(confidence))
        layer.setLabelsEnabled(True)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    unsaved = _save(layer, "By class; Confidence as opacity, outline width and label (MaskForge)", qml) if save else ""
    return f"by {class_field}" + (f", {confidence} as opacity, outline and label" if confidence else "") + unsaved


def _save(layer, description, qml=None):
    """Store the style in the GeoPackage as the layer's default (and in ``qml``); returns what went wrong or ''."""
    if layer.providerType() == "ogr" and layer.source().split("|")[0].lower().endswith(".gpkg"):
        error = layer.saveStyleToDatabase(STYLE_NAME, description, True, "")
        if error:
            return f"; not stored in the GeoPackage: {error}"
    if qml:
        layer.saveNamedStyle(qml)
    return ""


def style_tiles_layer(layer, qml=None, save=True):
    """Where to label next's tiles: an outline with its rank, never a fill (the imagery inside is what the
    analyst looks at, and the proposals are drawn over it); ``qml`` is ignored (the engine writes none)."""
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": "255,140,0,255", "outline_width": "0.8",
                                         "outline_width_unit": "MM", "outline_style": "dash"})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    if layer.fields().lookupField("Rank") >= 0:
        layer.setLabeling(_labels(None, "'#' || \"Rank\"", min_scale=0))
        layer.setLabelsEnabled(True)
    layer.triggerRepaint()
    return "orange dashed outlines, ranks as labels" + (_save(layer, "Tiles to label next: outlines and ranks "
                                                               "(MaskForge)") if save else "")
