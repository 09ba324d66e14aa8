"""The toolbar dialogs used more than once, in a real (offscreen) QGIS with real worker processes: Run pressed
again while the job runs, the dialog kept and run again after a success, a Train output folder that holds a
package, a drawn extent never drawn, and a finished step handing its output to the next step's open dialog.
Each failed before 0.5.9 (two jobs on one progress bar, a second run refused by the engine after it started, a
whole raster where a part was asked, the next dialog showing the old chips). dialog_session's fixtures.
"""
import os
import sys
from pathlib import Path

from qgis.core import QgsProject, QgsSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dialog_session import (  # noqa: E402,F401 (fixtures are found by their imported names)
    TINY, _detections, _fill, _open, _scene_layers, _wait_task, chips, escaped, plugin, scene)


def test_run_pressed_again_while_the_job_runs_starts_nothing_and_a_rerun_takes_a_free_name(plugin, tmp_path):
    from maskforge.bridge import tasks
    layer = _detections(tmp_path / "detections.gpkg")
    QgsProject.instance().addMapLayer(layer)
    dialog = _open(plugin, "MaskForgeNmsAction")
    dialog.close_when_started.setChecked(False)
    first = dialog.run()
    assert first is not None and not dialog.run_button.isEnabled()
    assert dialog.run() is None and "still running" in dialog.error_text()
    assert len(tasks.running_tasks()) == 1
    _wait_task(first, 60)
    assert first.result is not None and dialog.run_button.isEnabled()
    assert dialog.raw("OUTPUT") == str(tmp_path / "detections_nms_2.gpkg")    # the first run's file is taken
    dialog.close()
    dialog = _open(plugin, "MaskForgeNmsAction")                                # reopened from the toolbar
    second = _wait_task(dialog.run(), 60)
    assert second.result is not None, second.error
    assert sorted(p.name for p in tmp_path.glob("detections_nms*.gpkg")) == ["detections_nms.gpkg",
                                                                            "detections_nms_2.gpkg"]


def test_train_dialog_refuses_a_folder_holding_a_package_before_starting_and_offers_a_free_one(plugin, chips,
                                                                                            tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.emd").write_text("{}")                   # an earlier training's package
    (out / "model.dlpk").write_text("x")
    QgsSettings().setValue("MaskForge/dialogs/train/OUTPUT_MODEL", str(out))
    dialog = _open(plugin, "MaskForgeTrainAction")
    assert dialog.raw("OUTPUT_MODEL") == str(tmp_path / "model_2")   # restored, then moved to a free name
    assert "OVERWRITE" in dialog.fields
    _fill(dialog, INPUT_DATA=str(chips), EPOCHS=1, OUTPUT_MODEL=str(out), **TINY)
    assert dialog.run() is None
    assert "already holds model" in dialog.error_text() and "Replace the package" in dialog.error_text()
    assert sorted(os.listdir(out)) == ["model.dlpk", "model.emd"]     # untouched


def test_a_drawn_extent_not_drawn_is_refused_not_the_whole_raster(plugin, scene, tmp_path):
    from maskforge.ui.steps.extent_picker import DRAWN, WHOLE
    _scene_layers(scene)
    dialog = _open(plugin, "MaskForgeExportAction")
    _fill(dialog, TILE_SIZE_X=64, TILE_SIZE_Y=64, OUTPUT_FOLDER=str(tmp_path / "chips"))
    dialog.extent.mode.setCurrentIndex(DRAWN)
    assert dialog.validate() is None and "none is drawn yet" in dialog.error_text()
    dialog.extent.mode.setCurrentIndex(WHOLE)
    values, args = dialog.validate()
    assert values["EXTENT"] is None and not any(a.startswith("--extent") for a in args)


def test_an_export_hands_its_folder_to_the_open_train_dialog_unless_the_person_chose_another(plugin, scene,
                                                                                             tmp_path):
    _scene_layers(scene)
    train = _open(plugin, "MaskForgeTrainAction")           # opened once earlier in the session, kept
    train.close()
    export = _open(plugin, "MaskForgeExportAction")
    export.close_when_started.setChecked(False)
    _fill(export, TILE_SIZE_X=64, TILE_SIZE_Y=64, STRIDE_X=64, STRIDE_Y=64, OUTPUT_FOLDER=str(tmp_path / "chips"))
    assert _wait_task(export.run(), 90).result is not None
    train = _open(plugin, "MaskForgeTrainAction")
    assert train.raw("INPUT_DATA") == str(tmp_path / "chips")
    assert "chips" in train.data_label.text()                # described, as a folder picked by hand
    _fill(train, INPUT_DATA=str(tmp_path / "mine"))          # the person's own choice stays
    assert export.raw("OUTPUT_FOLDER") == str(tmp_path / "chips_2")
    assert _wait_task(export.run(), 90).result is not None
    assert train.raw("INPUT_DATA") == str(tmp_path / "mine")
    assert QgsSettings().value("MaskForge/dialogs/train/INPUT_DATA") == str(tmp_path / "chips_2")
