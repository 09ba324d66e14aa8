"""Processing parameters generated from the step contracts (core/contract/), and read back.

An algorithm declares its step; ``add_parameters`` gives Processing every parameter the contract
defines for QGIS, in its order, with its label, default, range, choices, help and the advanced flag,
and ``form_values`` reads what a run was given into the form the contract reads (``Step.of``).
Parameter names are the contract's keys, so saved models, scripts and batch files keep working.
"""
from qgis.core import (Qgis, QgsProcessingParameterBand, QgsProcessingParameterBoolean,
                       QgsProcessingParameterDefinition, QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField, QgsProcessingParameterFile,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsProcessingParameterVectorDestination)

from ..core.contract.params import absolute

_NUMBER = {"int": Qgis.ProcessingNumberParameterType.Integer, "float": Qgis.ProcessingNumberParameterType.Double}
_GEOMETRY = {"polygon": Qgis.ProcessingSourceType.VectorPolygon, "any": Qgis.ProcessingSourceType.VectorAnyGeometry}


def _label(p):
    return f"{p.label} (empty = {p.auto})" if p.auto and p.kind in ("int", "float") else p.label


def definition(p):
    """The Processing parameter of a contract parameter."""
    kind, optional = p.kind, p.optional
    if kind == "raster":
        d = QgsProcessingParameterRasterLayer(p.key, p.label, optional=optional)
    elif kind == "vector":
        d = QgsProcessingParameterFeatureSource(p.key, p.label, [_GEOMETRY[p.geometry]], optional=optional)
    elif kind == "field":
        # Optional in form always: processing.run and qgis_process refuse a left-out mandatory field even when it
        # has a default; empty means the default, as in the engine.
        d = QgsProcessingParameterField(
            p.key, p.label, defaultValue=p.default, parentLayerParameterName=p.parent, optional=True,
            type=Qgis.ProcessingFieldParameterDataType.Numeric if p.numeric else Qgis.ProcessingFieldParameterDataType.Any)
    elif kind in ("file", "folder"):
        d = QgsProcessingParameterFile(
            p.key, p.label, optional=optional, fileFilter=p.file_filter,
            behavior=Qgis.ProcessingFileParameterBehavior.Folder if kind == "folder"
            else Qgis.ProcessingFileParameterBehavior.File)
    elif kind == "folder_out":
        d = QgsProcessingParameterFolderDestination(p.key, p.label)
    elif kind == "layer_out":
        d = QgsProcessingParameterVectorDestination(p.key, p.label, Qgis.ProcessingSourceType.VectorPolygon)
    elif kind in _NUMBER:
        low = p.minimum if p.legacy_auto is None or p.minimum is None else min(p.minimum, p.legacy_auto)
        kwargs = {k: v for k, v in (("minValue", low), ("maxValue", p.maximum)) if v is not None}
        d = QgsProcessingParameterNumber(p.key, _label(p), _NUMBER[kind], p.default, optional=p.default is None,
                                         **kwargs)
    elif kind == "bool":
        d = QgsProcessingParameterBoolean(p.key, p.label, bool(p.default))
    elif kind == "choice":
        d = QgsProcessingParameterEnum(p.key, p.label, [c.label for c in p.choices],
                                       defaultValue=p.choice_index(p.default))
    elif kind == "bands":
        d = QgsProcessingParameterBand(p.key, p.label, parentLayerParameterName=p.parent, optional=True,
                                       allowMultiple=True)
    elif kind == "extent":
        d = QgsProcessingParameterExtent(p.key, p.label, optional=True)
    else:   # text, ints, folders: typed as text
        d = QgsProcessingParameterString(p.key, p.label, p.default, optional=p.default is None)
    help_text = " ".join(t for t in (p.help, p.empty_means()) if t)
    if help_text:
        d.setHelp(help_text[0].upper() + help_text[1:])
    if p.advanced:
        d.setFlags(d.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    return d


def add_parameters(alg, step):
    for p in step.PARAMS:
        if p.in_qgis:
            alg.addParameter(definition(p))


def form_values(alg, step, parameters, context, feedback, crs=None):
    """{key: value} of a run, as Step.of reads them. Layers: a vector source becomes a path the engine (OGR)
    reads; an extent is given in ``crs`` (the raster's). Rasters and output layers are the algorithm's:
    they need the layer (web layers) or the destination as Processing registered it."""
    from .base import extent_value, source_path
    values = {}
    for p in step.PARAMS:
        if not p.in_qgis or p.kind in ("raster", "layer_out"):
            continue
        key, kind, given = p.key, p.kind, parameters.get(p.key)
        if kind in _NUMBER:
            values[key] = None if given is None else (
                alg.parameterAsInt if kind == "int" else alg.parameterAsDouble)(parameters, key, context)
        elif kind == "bool":
            values[key] = alg.parameterAsBoolean(parameters, key, context)
        elif kind == "choice":
            values[key] = alg.parameterAsEnum(parameters, key, context)
        elif kind == "vector":
            values[key] = source_path(alg, parameters, key, context, feedback) if given else None
        elif kind == "extent":
            values[key] = extent_value(alg, parameters, key, context, crs) if crs is not None else None
        elif kind == "bands":
            values[key] = alg.parameterAsInts(parameters, key, context)
        elif kind in ("file", "folder"):
            values[key] = alg.parameterAsFile(parameters, key, context) or None
        elif kind == "folder_out":
            values[key] = absolute(alg.parameterAsFileOutput(parameters, key, context))
        else:
            values[key] = (alg.parameterAsString(parameters, key, context) or "").strip() or None
    return values
