"""A new user's first hour in a real QGIS window: label, export, train, detect, NMS, settings.

QGIS itself (the ``qgis`` application, with the plugin installed in a fresh profile and enabled)
runs on a 1366x768 Xvfb screen; walkthrough_driver.py, run inside it with ``--code``, drives the
real widgets with mouse and key events and writes down what a person would see. These tests
assert on that: every dialog fits without sideways scrolling or cut texts, every job ends with a
success message, the result layers are styled by class and Confidence and lie on the raster, and
the message log has no errors. One walk (a couple of minutes: 8 hand-drawn trees, 128 px chips,
one epoch of a resnet18 network on the CPU) serves all the tests of this module. Screenshots of
each step go to screenshots/walkthrough/ (git-ignored).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT.parent / "shared" / "data" / "osbs-trees"
SHOTS = ROOT / "screenshots" / "walkthrough"
SUCCESS = 3   # Qgis.Success, as the message bar reports it
STEPS = ["start", "label", "export", "train", "detect", "nms", "settings"]


def _qgis_profile(base):
    """A fresh QGIS profile with MaskForge installed (a link, as a developer installs it) and enabled."""
    profile = base / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "maskforge").symlink_to(ROOT)
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nmaskforge=true\n\n[qgis]\ncheckVersion=false\nshowTips=false\n"
                   "allowCrashReporting=false\n")
    return base


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """Run the walkthrough once in a real QGIS under Xvfb; its facts (dict) and the QGIS output."""
    missing = [tool for tool in ("qgis", "xvfb-run") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the walkthrough needs QGIS and Xvfb (make setup)")
    if not (SCENE / "image.tif").exists():
        pytest.skip(f"{SCENE} is absent: the walkthrough walks a real scene (../shared/data)")
    work = tmp_path_factory.mktemp("walkthrough")
    scene = work / "scene"          # a copy: default outputs go beside the raster, never into shared data
    scene.mkdir()
    for name in ("image.tif", "trees.geojson"):
        shutil.copy(SCENE / name, scene / name)
    (work / "home").mkdir()
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "HOME": str(work / "home"),
           "MASKFORGE_WALK_OUT": str(work), "MASKFORGE_WALK_SHOTS": str(SHOTS), "MASKFORGE_WALK_SCENE": str(scene)}
    env.pop("QGIS_CUSTOM_CONFIG_PATH", None)   # pytest-qgis's, for the offscreen tests
    env.pop("QGIS_OPTIONS_PATH", None)
    started = time.monotonic()
    run = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1366x768x24", "qgis", "--nologo",
         "--profiles-path", str(_qgis_profile(work / "qgis")), "--code", str(Path(__file__).with_name(
             "walkthrough_driver.py"))],
        env=env, capture_output=True, text=True, timeout=1800)
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "qgis-output.txt").write_text(run.stdout + run.stderr)
    output = (run.stdout + run.stderr)[-4000:]
    facts_file = work / "facts.json"
    assert facts_file.exists(), f"QGIS ended (rc {run.returncode}) without the walkthrough's facts:\n{output}"
    facts = json.loads(facts_file.read_text())
    facts["wall_seconds"] = round(time.monotonic() - started, 1)
    print("walkthrough seconds per step:", {k: v.get("seconds") for k, v in facts["steps"].items()},
          "total", facts["wall_seconds"], file=sys.stderr)
    return facts, output


def test_every_step_succeeds_with_a_message(walk):
    facts, output = walk
    assert "crash" not in facts, facts["crash"]
    for name in STEPS:
        assert name in facts["steps"], f"the walk stopped before '{name}':\n{output}"
        assert facts["steps"][name]["ok"], f"{name}: {facts['steps'][name].get('error')}"
    steps = facts["steps"]
    assert steps["start"]["started_by_qgis"] and steps["start"]["menu_in_menubar"]
    assert {"Compute Accuracy…", "Compare Detections…", "Settings…", "Diagnostics…"} <= set(steps["start"]["menu"])
    # Labels drawn with the Rectangle tool, kept without a folder question in the unsaved project.
    assert steps["label"]["labels"] == 8 and steps["label"]["save_state"].startswith("✓ Saved in")
    assert steps["export"]["prefilled"] == [True, True, "classvalue", "classname"]
    assert steps["export"]["toolbar_opens_the_same_dialog"]
    for name, words in (("export", "Exported"), ("train", "Model package"), ("detect", "Detected"),
                        ("nms", "Kept")):
        assert any(level == SUCCESS and words in text for level, text in steps[name]["bar"]), (name, steps[name])
    # The report is offered in the dialog the person is looking at; the status says what training ended with.
    assert steps["train"]["result_button"] == [True, "Open report"]
    assert steps["train"]["summary"] != "Done."
    # After the last step the long phases say what they do.
    assert any("validat" in s.lower() for s in facts["statuses"]["train"]), facts["statuses"]["train"]
    assert any("report" in s.lower() for s in facts["statuses"]["train"]), facts["statuses"]["train"]
    assert steps["nms"]["confidence_field"] == "Confidence" and steps["nms"]["input_is_detections"]
    assert steps["nms"]["output"].endswith("osbs_detections_nms.gpkg"), steps["nms"]["output"]


def test_every_dialog_fits_1366x768(walk):
    facts, _ = walk
    # The Xvfb screen, in device pixels (QGIS scales logical pixels by the screen's DPI; rounding may lose one).
    assert abs(facts["screen"][0] - 1366) <= 2 and abs(facts["screen"][1] - 768) <= 2, facts["screen"]
    for name in ("2-export", "3-train", "4-detect", "5-nms", "6-settings", "7-diagnostics"):
        assert name in facts["fit"], f"{name} was not opened"
    problems = {name: found for name, found in facts["fit"].items() if found}
    assert not problems, json.dumps(problems, indent=1)
    assert facts["squeezed"], "an Export dialog squeezed to 380x300 passed the fit check: the check is blind"


def test_results_are_styled_by_class_and_confidence(walk):
    facts, _ = walk
    for step in ("detect", "nms"):
        layer = facts["layers"].get(step)
        assert layer and layer["features"] > 0, (step, layer)
        assert layer["renderer"] == "categorizedSymbol" and layer["class_attribute"] == "ClassValue", layer
        assert layer["confidence_styled"] and layer["labels"] and layer["stored_style"], layer


def test_detections_lie_inside_the_raster(walk):
    facts, _ = walk
    for step in ("detect", "nms"):
        assert facts["layers"][step]["outside_px"] <= 0.5, facts["layers"][step]


def test_message_log_has_no_errors(walk):
    facts, _ = walk
    critical = 2   # Qgis.Critical (Success is 3)
    errors = [entry for entry in facts["log"]
              if entry[1] == critical and (entry[0] == "MaskForge" or "python" in entry[0].lower())]
    assert not errors, errors
