"""QGIS 4 (Qt6) readiness of the QGIS-side code: find PyQt5-only constructs, and fix the mechanical ones.

    .venv/bin/python scripts/qt6_check.py          # list them (exit status 1 when there are any)
    .venv/bin/python scripts/qt6_check.py --fix    # rewrite scoped enums, exec_, QVariant types, moved imports

QGIS 4 runs plugins on PyQt6, where enums are scoped (``Qt.AlignmentFlag.AlignLeft``, not ``Qt.AlignLeft``),
``exec_`` is gone, ``QRegExp`` and ``QDesktopWidget`` are removed, ``QVariant.Int`` is ``QMetaType.Type.Int``,
``QAction``/``QShortcut`` live in QtGui, and only ``qgis.PyQt`` hides the PyQt5/PyQt6 difference. The list
follows QGIS's own migration tool (scripts/pyqt5_to_pyqt6 in the QGIS repository) and its wiki page "Plugin
migration to be compatible with Qt5 and Qt6". The spellings it writes work on QGIS 3.40 (PyQt5) too.

Unscoped enums are found by asking the installed classes (PyQt5 and QGIS) what each ``Class.Name`` is, not
from a hand-kept list: an enum member reached directly through a class is unscoped, and its enum type says
how QGIS 4 spells it (``QgsWkbTypes.PolygonGeometry`` is ``Qgis.GeometryType.Polygon``). This needs only
``qgis.core``/``qgis.gui``/``qgis.PyQt`` to import (no QgsApplication): a second for the whole plugin.
QGIS's own tool needs PyQt6 installed, which QGIS 3.40 on Debian is not built with; hence this one.
Everything outside core/, tests/ and scripts/ is the QGIS side (core/ never imports Qt).
"""
import ast
import enum
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_QGIS_SIDE = {"core", "tests", "scripts", ".venv", ".git", "docs", "resources", "shared"}
LINE_LENGTH = 120

REMOVED_NAMES = {"QRegExp": "QRegularExpression", "QRegExpValidator": "QRegularExpressionValidator",
                 "QDesktopWidget": "QScreen (QApplication.primaryScreen())", "qApp": "QApplication.instance()"}
RENAMED_ENUMS = {("Qt", "MidButton"): "Qt.MouseButton.MiddleButton",
                 ("Qt", "TextColorRole"): "Qt.ItemDataRole.ForegroundRole",
                 ("Qt", "BackgroundColorRole"): "Qt.ItemDataRole.BackgroundRole"}
RENAMED_METHODS = {"exec_": "exec", "print_": "print"}
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoStack", "QFileSystemModel"}
METATYPE_NAMES = {"String": "QString", "StringList": "QStringList", "ByteArray": "QByteArray", "Date": "QDate",
                  "DateTime": "QDateTime", "Time": "QTime", "Map": "QVariantMap", "List": "QVariantList"}
WRAPPED_MODULES = ("qgis.PyQt", "qgis.core", "qgis.gui", "qgis.analysis")
# Where the names a fix may introduce are imported from.
HOME_MODULE = {"Qgis": "qgis.core", "QMetaType": "qgis.PyQt.QtCore", "Qt": "qgis.PyQt.QtCore"}


class Problem:
    """One PyQt5-only construct: where, what, and what QGIS 4 wants (``fix`` is the replacement text of
    the source span, None when it needs a person)."""

    def __init__(self, node, what, instead, fix=None, span=None):
        self.line, self.what, self.instead, self.fix = node.lineno, what, instead, fix
        self.span = span or (node.col_offset, node.end_col_offset)   # UTF-8 byte columns, as ast gives

    def __repr__(self):
        return f"{self.line}: {self.what} -> {self.instead}"


def qgis_side_files(root=ROOT):
    return sorted(p for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in NOT_QGIS_SIDE)


def _imported_names(tree):
    """{local name: object} for each ``from qgis.X import Name`` of the module."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(WRAPPED_MODULES):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name != "*" and hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def _is_enum_member(value):
    return isinstance(value, enum.Enum) or type(type(value)).__name__ == "enumtype"   # sip's enums (PyQt5)


def _scoped_name(owner_name, member_name, value):
    enum_type = type(value)
    qualified = enum_type.__qualname__ if "." in enum_type.__qualname__ else f"{owner_name}.{enum_type.__name__}"
    return f"{qualified}.{value.name if isinstance(value, enum.Enum) else member_name}"


def _attribute_problem(node, names):
    owner_name, member = node.value.id, node.attr
    if (owner_name, member) in RENAMED_ENUMS:
        return Problem(node, f"{owner_name}.{member}", RENAMED_ENUMS[(owner_name, member)],
                       RENAMED_ENUMS[(owner_name, member)])
    owner = names.get(owner_name)
    if not isinstance(owner, type):
        return None
    if owner.__name__ == "QVariant" and member[:1].isupper() and member != "Type":
        instead = f"QMetaType.Type.{METATYPE_NAMES.get(member, member)}"
        return Problem(node, f"QVariant.{member}", instead, instead)
    value = getattr(owner, member, None)
    if value is None or isinstance(value, type) or not _is_enum_member(value):
        return None
    instead = _scoped_name(owner_name, member, value)
    return Problem(node, f"{owner_name}.{member}", instead, instead)


def problems_in(source, filename="<source>"):
    """The PyQt5-only constructs of one module's source, in source order."""
    tree = ast.parse(source, filename=filename)
    names = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Problem(node, f"import {a.name}", "import through qgis.PyQt") for a in node.names
                      if a.name.split(".")[0] in ("PyQt4", "PyQt5", "PyQt6", "sip")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in ("PyQt4", "PyQt5", "PyQt6", "sip"):
                found.append(Problem(node, f"from {module} import", "import through qgis.PyQt"))
            if module == "qgis.PyQt.QtWidgets":
                found += [Problem(node, f"{a.name} from QtWidgets", f"from qgis.PyQt.QtGui import {a.name}")
                          for a in node.names if a.name in MOVED_TO_QTGUI]
            found += [Problem(node, a.name, REMOVED_NAMES[a.name]) for a in node.names if a.name in REMOVED_NAMES]
        elif isinstance(node, ast.FunctionDef) and node.name in RENAMED_METHODS:
            found.append(Problem(node, f"def {node.name}", f"def {RENAMED_METHODS[node.name]}"))
        elif isinstance(node, ast.Attribute):
            if node.attr in RENAMED_METHODS:
                end = node.end_col_offset
                found.append(Problem(node, f".{node.attr}", f".{RENAMED_METHODS[node.attr]}",
                                     RENAMED_METHODS[node.attr], (end - len(node.attr), end)))
            elif node.attr == "width" and getattr(getattr(node.value, "func", None), "attr", "") == "fontMetrics":
                found.append(Problem(node, "fontMetrics().width", "fontMetrics().horizontalAdvance"))
            elif node.attr == "desktop" and getattr(node.value, "id", "") == "QApplication":
                found.append(Problem(node, "QApplication.desktop()", "QApplication.primaryScreen()"))
            elif isinstance(node.value, ast.Name):
                problem = _attribute_problem(node, names)
                if problem is not None:
                    found.append(problem)
        elif isinstance(node, ast.Subscript) and getattr(node.value, "attr", "") == "activated":
            found.append(Problem(node, "activated[str]", "textActivated"))
    return sorted(found, key=lambda p: (p.line, p.span))


def scan(root=ROOT):
    """[(file relative to root, Problem)] over the QGIS side."""
    return [(str(path.relative_to(root)), problem) for path in qgis_side_files(root)
            for problem in problems_in(path.read_text(encoding="utf-8"), str(path))]


# -- the mechanical fix ---------------------------------------------------------------------------

def _apply_spans(source, problems):
    lines = source.splitlines(keepends=True)
    for p in sorted((p for p in problems if p.fix), key=lambda p: (p.line, p.span), reverse=True):
        raw = lines[p.line - 1].encode("utf-8")
        lines[p.line - 1] = (raw[:p.span[0]] + p.fix.encode("utf-8") + raw[p.span[1]:]).decode("utf-8")
    return "".join(lines)


def _used_names(tree):
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _render_import(module, names, indent=""):
    text = f"{indent}from {module} import {', '.join(names)}"
    if len(text) <= LINE_LENGTH:
        return text + "\n"
    head, out, line = f"{indent}from {module} import (", [], ""
    for i, name in enumerate(names):
        piece = name + (")" if i == len(names) - 1 else ", ")
        start = head if not out and not line else " " * len(head)
        if line and len(line + piece.rstrip()) > LINE_LENGTH:
            out.append(line.rstrip())
            line = " " * len(head) + piece
        else:
            line = (line or start) + piece
    out.append(line.rstrip())
    return "\n".join(out) + "\n"


def _fix_imports(source, before_used):
    """Imports after the renames: names now needed (Qgis, QMetaType, QAction from QtGui) are added,
    names the renames left unused are dropped; imports nothing touched keep their text."""
    tree = ast.parse(source)
    used = _used_names(tree)
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(WRAPPED_MODULES)]
    present = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    wanted = {}
    for name in sorted(used - present):
        if name in HOME_MODULE:
            wanted.setdefault(HOME_MODULE[name], set()).add(name)
    for node in imports:
        if node.module == "qgis.PyQt.QtWidgets":
            moved = {a.name for a in node.names if a.name in MOVED_TO_QTGUI}
            if moved:
                wanted.setdefault("qgis.PyQt.QtGui", set()).update(moved)
    lines = source.splitlines(keepends=True)
    for node in sorted(imports, key=lambda n: n.lineno, reverse=True):
        old = [a.name if not a.asname else f"{a.name} as {a.asname}" for a in node.names]
        keep = [n for n in old if not (n in before_used and n not in used)   # left unused by the renames
                and not (node.module == "qgis.PyQt.QtWidgets" and n in MOVED_TO_QTGUI)]
        new = sorted(set(keep) | wanted.pop(node.module, set()))
        if new != sorted(old) or set(keep) != set(old):
            text = _render_import(node.module, new, " " * node.col_offset) if new else ""
            lines[node.lineno - 1:node.end_lineno] = [text]
    if wanted:   # a module not imported yet: a line of its own after the last qgis import
        last = max(n.end_lineno for n in imports) if imports else 0
        lines[last:last] = [_render_import(module, sorted(names)) for module, names in sorted(wanted.items())]
    return "".join(lines)


def fix_source(source):
    """The source with every mechanical fix applied (and the problems that need a person)."""
    problems = problems_in(source)
    before_used = _used_names(ast.parse(source))
    fixed = _apply_spans(source, problems)
    moved = any(p.what.endswith("from QtWidgets") for p in problems)
    if fixed != source or moved:
        fixed = _fix_imports(fixed, before_used)
    return fixed, [p for p in problems_in(fixed) if p.fix is None]


def main(argv):
    if "--fix" in argv:
        for path in qgis_side_files():
            source = path.read_text(encoding="utf-8")
            fixed, _ = fix_source(source)
            if fixed != source:
                path.write_text(fixed, encoding="utf-8")
                print(f"fixed {path.relative_to(ROOT)}")
    found = scan()
    for path, problem in found:
        print(f"{path}:{problem.line}: {problem.what} -> {problem.instead}")
    print(f"{len(found)} PyQt5-only construct(s) in the QGIS-side code")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
