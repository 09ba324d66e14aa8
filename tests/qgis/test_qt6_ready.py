"""QGIS 4 (Qt6) readiness: the QGIS-side code uses no PyQt5-only construct (scripts/qt6_check.py).

The scan asks the installed PyQt5 and QGIS classes what each ``Class.Name`` is; it imports qgis.core,
qgis.gui and qgis.PyQt but starts no QgsApplication, and takes about a second.
"""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _qt6_check():
    spec = importlib.util.spec_from_file_location("qt6_check", ROOT / "scripts" / "qt6_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


qt6_check = _qt6_check()

BAD = """from PyQt5.QtCore import QTimer
from qgis.core import Qgis, QgsTask, QgsWkbTypes
from qgis.PyQt.QtCore import QRegExp, Qt, QVariant
from qgis.PyQt.QtWidgets import QAction, QMessageBox, QSizePolicy
a = Qt.AlignLeft | Qt.AlignVCenter
b = QMessageBox.Yes
c = QgsTask.CanCancel
d = Qgis.Critical
e = QgsWkbTypes.PolygonGeometry
f = QMessageBox(None).exec_()
g = QVariant.Int
h = Qt.MidButton
ok = (Qt.AlignmentFlag.AlignLeft, QSizePolicy.Policy.Expanding, Qgis.MessageLevel.Info, QgsTask.Flag, QAction)
"""


def test_qgis_side_uses_no_pyqt5_only_construct():
    files = qt6_check.qgis_side_files()
    assert len(files) > 20 and ROOT / "plugin.py" in files and not any("core" == p.parent.name for p in files)
    found = qt6_check.scan()
    listing = "\n".join(f"{path}:{p.line}: {p.what} -> {p.instead}" for path, p in found)
    assert not found, (f"{len(found)} PyQt5-only construct(s) that QGIS 4 (Qt6) would fail on "
                       f"(`.venv/bin/python scripts/qt6_check.py --fix` rewrites the mechanical ones):\n{listing}")


def test_the_scan_flags_each_kind_of_pyqt5_only_construct():
    found = [(p.line, p.instead) for p in qt6_check.problems_in(BAD)]
    assert found == [(1, "import through qgis.PyQt"), (3, "QRegularExpression"),
                     (4, "from qgis.PyQt.QtGui import QAction"), (5, "Qt.AlignmentFlag.AlignLeft"),
                     (5, "Qt.AlignmentFlag.AlignVCenter"), (6, "QMessageBox.StandardButton.Yes"),
                     (7, "QgsTask.Flag.CanCancel"), (8, "Qgis.MessageLevel.Critical"),
                     (9, "Qgis.GeometryType.Polygon"), (10, ".exec"), (11, "QMetaType.Type.Int"),
                     (12, "Qt.MouseButton.MiddleButton")]


def test_the_fix_rewrites_the_mechanical_ones_and_their_imports():
    fixed, left = qt6_check.fix_source(BAD)
    assert [p.what for p in left] == ["from PyQt5.QtCore import", "QRegExp"]   # those need a person
    assert "from qgis.core import Qgis, QgsTask\n" in fixed                    # QgsWkbTypes no longer used
    assert "from qgis.PyQt.QtCore import QMetaType, QRegExp, Qt\n" in fixed    # QVariant was only for .Int
    assert "from qgis.PyQt.QtWidgets import QMessageBox, QSizePolicy\nfrom qgis.PyQt.QtGui import QAction\n" in fixed
    assert "a = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter\n" in fixed
    assert "e = Qgis.GeometryType.Polygon\n" in fixed and "QMessageBox(None).exec()" in fixed
    assert "g = QMetaType.Type.Int\nh = Qt.MouseButton.MiddleButton\n" in fixed
    compile(fixed, "fixed", "exec")
