"""How a labels layer looks and what classes it carries: one colour per class of the schema, and the schema
read back from the layer (its stored property, else its categorized style, else its data).
"""
from qgis.core import NULL, Qgis, QgsCategorizedSymbolRenderer, QgsFeatureRequest, QgsFillSymbol, QgsRendererCategory

from .class_schema import ClassSchema, LabelClass, SchemaError
from .labels_layer import CLASS_VALUE_FIELD, class_fields

SCHEMA_PROPERTY = "maskforge/classes"   # the schema travels in the project with the layer
UNKNOWN_COLOR = (128, 128, 128)


def class_symbol(color, dashed=False):
    r, g, b = color
    symbol = QgsFillSymbol.createSimple({
        "color": f"{r},{g},{b},60",                 # see the image through the label
        "outline_color": f"{r},{g},{b},255", "outline_width": "0.6", "outline_width_unit": "MM",
        "outline_style": "dash" if dashed else "solid"})
    return symbol


def style_layer(layer, schema, value_field=None):
    """A categorized renderer on the class value field, one category per class of the schema.

    A last catch-all category draws labels whose value the schema lacks, in grey dashes,
    so nothing drawn ever becomes invisible (QGIS takes the category with the empty
    string as "all other values"; one with NULL would only match NULL).

    The schema itself is kept as a custom property of the layer, saved with the
    project. It is not written into the GeoPackage as a default style: with QGIS
    3.22 and GDAL 3.6, ``saveStyleToDatabase`` on a second GeoPackage in a session
    left the layer's own connection unable to read the file ("unable to open
    database file"). A GeoPackage opened in another project gets its classes back
    from its data (values and names; colours from the engine's palette).
    """
    value_field = value_field or class_fields(layer)[0] or CLASS_VALUE_FIELD
    categories = [QgsRendererCategory(c.value, class_symbol(c.color), c.name) for c in schema]
    categories.append(QgsRendererCategory("", class_symbol(UNKNOWN_COLOR, dashed=True), "not in the class schema"))
    layer.setRenderer(QgsCategorizedSymbolRenderer(value_field, categories))
    layer.setCustomProperty(SCHEMA_PROPERTY, schema.to_json())
    layer.triggerRepaint()


def schema_from_layer(layer):
    """The schema a labels layer carries: its MaskForge property, else its categorized style, else its data.

    Returns None when the layer says nothing about classes (a new, empty layer).
    """
    stored = layer.customProperty(SCHEMA_PROPERTY)
    if stored:
        try:
            return ClassSchema.from_json(stored, f"the class schema stored with '{layer.name()}'")
        except SchemaError:
            pass   # hand-edited project: fall back to what the style and the data say
    value_field, name_field = class_fields(layer)
    if value_field is None:
        return None
    renderer = layer.renderer()
    if isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute().lower() == value_field.lower():
        classes = []
        for cat in renderer.categories():
            try:
                value = int(cat.value())
            except (TypeError, ValueError):
                continue   # the catch-all category
            color = cat.symbol().color()
            classes.append(LabelClass(value, cat.label() or str(value), (color.red(), color.green(), color.blue())))
        try:
            if classes:
                return ClassSchema(classes)
        except SchemaError:
            pass
    return schema_from_data(layer, value_field, name_field)


def schema_from_data(layer, value_field, name_field):
    names = {}
    request = QgsFeatureRequest().setFlags(Qgis.FeatureRequestFlag.NoGeometry)
    request.setSubsetOfAttributes([f for f in (value_field, name_field) if f], layer.fields())
    for feature in layer.getFeatures(request):
        value = feature[value_field]
        if value in (None, NULL) or not isinstance(value, int) or value < 1:
            continue
        name = feature[name_field] if name_field else None
        if value not in names or (not names[value] and name):
            names[value] = str(name).strip() if name not in (None, NULL) and str(name).strip() else ""
    if not names:
        return None
    schema = ClassSchema()
    for value in sorted(names):
        try:
            schema.add(names[value] or None, value)
        except SchemaError:
            schema.add(None, value)   # two values share a name in the data
    return schema
