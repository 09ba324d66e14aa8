"""The Label next page where the user does something else meanwhile, in real QGIS: a new output shown while a tile
is picked or a correction is being drawn, the output's layers removed from the project before an undo, an undo
that cannot be written, a selection accepted, a suggest job started while a training runs. Each failed before
0.5.9 (a tile that could not be picked again, a drawn outline dropped, tracebacks, an undo step lost, a status
naming another proposal, a suggest job beside a training). The fixtures are tests/qgis/test_label_next.py's: a
real ``core suggest`` output, a real dock writing into a labels GeoPackage that holds a layer of the user's.
"""
import time

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest

from tests.qgis.test_label_next import (_click_tile, _key, _opened, _review, _settled, dock, on_disk,  # noqa: F401
                                        scene, suggested)
from tests.qgis.test_labeling import click, double_click

CLICKS = [(200, 200), (320, 210), (300, 330), (210, 310)]


def _draw(canvas):
    for x, y in CLICKS[:-1]:
        click(canvas, x, y)
    double_click(canvas, *CLICKS[-1])


def _pending(value):
    return value in (None, "") or str(value) == "NULL"


def _file_reviews(output):
    """{fid order: review} of the proposals as another process reads their file."""
    return [row.get("review") for row in on_disk(output)["label_next_proposals"]]


def test_a_new_output_leaves_no_tile_highlighted_and_a_click_picks_it_again(dock, scene):
    dock, _ = dock
    page = _opened(dock)
    _click_tile(page, 0)
    assert page.review is not None and page.rank == 1
    assert page.open_file() is not None                     # the next round's output arrives
    assert page.review is None and page.table.selectionModel().selectedRows() == []
    assert not any(button.isEnabled() for button in page.buttons.values())
    assert "Tile #1" not in page.info.text()
    _click_tile(page, 0)                                    # the same row, clicked again
    assert page.review is not None and page.rank == 1


def test_a_correction_asked_before_the_list_changed_is_given_up_and_said(dock, scene, qgis_canvas):
    dock, _ = dock
    page = _opened(dock)
    _click_tile(page, 0)
    fid = page.review.current()
    QTest.mouseClick(page.buttons["C"], Qt.MouseButton.LeftButton)
    assert qgis_canvas.mapTool() is dock.tools["polygon"]
    page.open_file()                                        # a suggest run finishes meanwhile
    assert dock.shape_sink is None and qgis_canvas.mapTool() is not dock.tools["polygon"]
    assert "correction was given up" in dock.status_label.text()
    dock.activate_tool("polygon")                           # what is drawn now is a label of its own, kept
    _draw(qgis_canvas)
    assert dock.store.layer.featureCount() == 1
    assert _pending(page.proposals.getFeature(fid)["review"])


def test_the_outputs_layers_removed_clear_the_page_and_the_keys_do_nothing(dock, scene):
    dock, _ = dock
    page = _opened(dock)
    _click_tile(page, 0)
    _settled(page)
    QgsProject.instance().removeMapLayers([page.proposals.id(), page.tiles.id()])
    QgsApplication.processEvents()
    assert page.tiles is None and page.review is None and page.table.rowCount() == 0
    assert "removed" in page.info.text()
    _key(page, Qt.Key.Key_A)                                # no traceback, no label
    assert page.accept() is None and page.reject() is None and page.correct() is None
    assert dock.store.layer.featureCount() == 0


def test_undo_after_the_proposals_left_the_map_still_reaches_their_file(dock, scene):
    dock, path = dock
    page = _opened(dock)
    _click_tile(page, 0)
    _key(page, Qt.Key.Key_A)                                # the first proposal accepted,
    _key(page, Qt.Key.Key_R)                                # the second rejected: a known negative
    assert len(on_disk(path)["negatives"]) == 1 and dock.store.layer.featureCount() == 1
    assert sorted(map(str, _file_reviews(scene["output"])))[-2:] == ["accepted", "rejected"]
    _settled(page)
    QgsProject.instance().removeMapLayers([page.proposals.id(), page.tiles.id()])
    QgsApplication.processEvents()

    dock.undo_action.trigger()                              # the reject: negative gone, pending in the file
    assert on_disk(path)["negatives"] == [] and dock.store.can_redo()
    assert [str(r) for r in _file_reviews(scene["output"]) if not _pending(r)] == ["accepted"]
    dock.undo_action.trigger()                              # the accept: label gone, pending in the file
    assert dock.store.layer.featureCount() == 0 and on_disk(path)["labels"] == []
    assert all(_pending(r) for r in _file_reviews(scene["output"]))
    dock.redo_action.trigger()
    dock.redo_action.trigger()
    assert len(on_disk(path)["negatives"]) == 1 and dock.store.layer.featureCount() == 1
    assert sorted(str(r) for r in _file_reviews(scene["output"]) if not _pending(r)) == ["accepted", "rejected"]


def test_an_undo_that_cannot_be_written_keeps_its_step(dock, scene):
    dock, _ = dock
    page = _opened(dock)
    _click_tile(page, 0)
    fid = page.review.current()
    _key(page, Qt.Key.Key_A)
    labels = dock.store.layer
    labels.setReadOnly(True)                                # the file cannot be written for a moment
    dock.undo_action.trigger()
    assert labels.featureCount() == 1 and dock.store.can_undo() and not dock.store.can_redo()
    assert "cannot be edited" in dock.status_label.text() or "Could not" in dock.status_label.text()
    labels.setReadOnly(False)
    dock.undo_action.trigger()                              # tried again: it works, and can be redone
    assert labels.featureCount() == 0 and dock.store.can_redo()
    assert _pending(_review(page, fid))


def test_accepting_a_selection_says_what_was_accepted(dock, scene):
    dock, _ = dock
    page = _opened(dock)
    _click_tile(page, 0)
    current, other = page.review._queue[0], page.review._queue[3]
    page.proposals.selectByIds([other])
    page.accept()
    assert _review(page, other) == "accepted" and _pending(_review(page, current))
    assert f"confidence {page.review.confidence(current):.2f}" not in dock.status_label.text()
    assert "confidence 0.4" in dock.status_label.text()     # the 0.47 one, the lowest of the tile
    two = page.review._queue[:2]
    page.proposals.selectByIds(two)
    page.accept()
    assert "Accepted 2 proposals" in dock.status_label.text()
    assert [_review(page, fid) for fid in two] == ["accepted", "accepted"]


def test_suggest_waits_for_a_running_training(maskforge):
    """Where to label next runs the detection network: it queues behind a training as a detection does."""
    from maskforge.bridge import tasks
    said = []
    assert tasks._heavy.acquire(timeout=5)                  # a training holds the slot
    try:
        task = tasks.JobTask("suggest", ["--help"], "suggest while training")
        task.progressText.connect(said.append)
        tasks.start(task)
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.05)
        assert said and said[0].startswith("Waiting for the running training")
        task.cancel()
        while task in tasks.running_tasks() and time.monotonic() < deadline + 30:
            QgsApplication.processEvents()
            time.sleep(0.05)
        assert task.result is None and "waiting" in str(task.error).lower()
    finally:
        tasks._heavy.release()


def test_a_processing_detection_waits_for_a_running_training(maskforge):
    """The Processing algorithms take the same slot as the dialogs' jobs: a detection started from the toolbox
    while a dialog's training runs waits (and says so), and can be cancelled while it waits."""
    import threading
    from qgis.core import QgsProcessingFeedback
    from maskforge.algorithms.detect_objects import DetectObjectsAlgorithm
    from maskforge.bridge import tasks
    feedback, said, result = QgsProcessingFeedback(), [], {}
    feedback.pushInfo = lambda text: said.append(text)      # what run_step says while it waits
    assert tasks._heavy.acquire(timeout=5)                  # a training holds the slot
    try:
        worker = threading.Thread(target=lambda: result.update(
            out=DetectObjectsAlgorithm().run_step("detect", ["--help"], feedback)))
        worker.start()
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said and said[0].startswith("Waiting for the running training")
        feedback.cancel()
        worker.join(30)
        assert not worker.is_alive() and result["out"] == {}   # cancelled while waiting: nothing ran
    finally:
        tasks._heavy.release()
