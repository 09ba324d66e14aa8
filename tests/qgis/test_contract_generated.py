"""The toolbox and the dialogs are generated from the step contracts (core/contract/).

Processing's parameters (names kept for saved models and scripts), their defaults, ranges, choices and
optional flags are the contract's, and a Model Designer value saved by MaskForge 0.3 (0 or -1 for "let
the engine choose") still runs as the engine's choice. A dialog left as it opens gives the contract's
defaults."""
import pytest
from qgis.core import QgsApplication, QgsProcessingParameterDefinition

ALGORITHMS = {"export": "maskforge:exporttrainingdata", "train": "maskforge:train",
              "detect": "maskforge:detectobjects", "nms": "maskforge:nonmaximumsuppression",
              "evaluate": "maskforge:computeaccuracy", "compare": "maskforge:comparedetections",
              "regularize": "maskforge:regularize", "suggest": "maskforge:suggest"}


@pytest.mark.parametrize("step", sorted(ALGORITHMS))
def test_processing_parameters_are_the_contracts(provider, step):
    from maskforge.core.contract import STEPS
    contract = STEPS[step]
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHMS[step])
    definitions = {d.name(): d for d in algorithm.parameterDefinitions()}
    qgis_params = [p for p in contract.PARAMS if p.in_qgis]
    assert [d.name() for d in algorithm.parameterDefinitions()] == [p.key for p in qgis_params]
    for p in qgis_params:
        d = definitions[p.key]
        optional = bool(d.flags() & QgsProcessingParameterDefinition.Flag.FlagOptional)
        if p.kind in ("int", "float"):
            assert d.defaultValue() == p.default and optional == (p.default is None), p.key
            assert d.minimum() <= (p.minimum if p.minimum is not None else d.minimum()), p.key
            if p.maximum is not None:
                assert d.maximum() == p.maximum, p.key
        elif p.kind == "choice":
            assert d.options() == [c.label for c in p.choices] and d.defaultValue() == p.choice_index(p.default)
        elif p.kind == "bool":
            assert d.defaultValue() == p.default, p.key
        elif p.kind in ("raster", "vector", "file", "folder"):
            assert optional == p.optional, p.key
        advanced = bool(d.flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        assert advanced == p.advanced, p.key


def test_a_model_saved_with_the_old_sentinels_runs_as_the_engines_choice(provider):
    """0.3 saved THRESHOLD 0, PADDING -1, TILE_SIZE 0 and BATCH_SIZE 0 for 'let the engine choose': Processing
    still accepts them, and the job built from them lets the engine choose."""
    from qgis.core import QgsProcessingContext
    from maskforge.core.contract import Detect
    algorithm = QgsApplication.processingRegistry().algorithmById("maskforge:detectobjects")
    context = QgsProcessingContext()
    old = {"THRESHOLD": 0.0, "PADDING": -1, "TILE_SIZE": 0, "BATCH_SIZE": 0, "CELL_SIZE": 0.0}
    for key, value in old.items():
        assert algorithm.parameterDefinition(key).checkValueIsAcceptable(value, context), key
    args = Detect.of({"INPUT_RASTER": "r.tif", "MODEL": "m.dlpk", "OUTPUT": "d.gpkg", **old}).to_args()
    assert not {"--threshold", "--padding", "--tile-size", "--batch-size", "--cell-size"} & set(args)


@pytest.mark.parametrize("dialog_name", ["ExportDialog", "TrainDialog", "DetectDialog", "NmsDialog"])
def test_a_dialog_as_it_opens_gives_the_contracts_defaults(qgis_iface, maskforge, dialog_name, monkeypatch):
    from qgis.core import QgsSettings
    import importlib
    module = {"ExportDialog": "export_dialog", "TrainDialog": "train_dialog", "DetectDialog": "detect_dialog",
              "NmsDialog": "nms_dialog"}[dialog_name]
    cls = getattr(importlib.import_module(f"maskforge.ui.steps.{module}"), dialog_name)
    QgsSettings().remove(f"MaskForge/dialogs/{cls.STEP}")       # nothing remembered
    dialog = cls(qgis_iface)
    try:
        job = cls.CONTRACT.of(dialog.values())
        for p in cls.CONTRACT.PARAMS:
            if p.in_qgis and p.key in dialog.fields and p.key != "DEVICE" and not p.required \
                    and p.kind not in ("raster", "vector", "field", "extent", "folder_out", "layer_out"):
                assert job[p.key] == p.default, (p.key, job[p.key], p.default)
    finally:
        dialog.cleanup()
        dialog.deleteLater()


def test_a_value_remembered_by_03_shows_as_the_engines_choice(qgis_iface, maskforge):
    """0.3 remembered 0 for 'the package's threshold' (QgsSettings gives it back as text): the field shows the
    engine's choice and reads None, so the next remembered value is the new convention."""
    from qgis.core import QgsSettings
    from maskforge.ui.steps.detect_dialog import DetectDialog
    from maskforge.ui.steps.train_dialog import TrainDialog
    for cls, key in ((DetectDialog, "THRESHOLD"), (DetectDialog, "CELL_SIZE"), (TrainDialog, "LEARNING_RATE")):
        QgsSettings().remove(f"MaskForge/dialogs/{cls.STEP}")
        QgsSettings().setValue(f"MaskForge/dialogs/{cls.STEP}/{key}", "0.0")
        dialog = cls(qgis_iface)
        try:
            spin = dialog.fields[key].widget
            assert dialog.fields[key].get() is None and spin.text() == spin.specialValueText(), (key, spin.text())
        finally:
            dialog.cleanup()
            dialog.deleteLater()
            QgsSettings().remove(f"MaskForge/dialogs/{cls.STEP}")
