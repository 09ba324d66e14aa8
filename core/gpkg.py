"""Results written as one layer of a GeoPackage, never at the cost of the file's other layers.

A GeoPackage is a container: users keep their labels, roads and earlier
results in one file. A step that writes a polygon layer (detect, nms, regularize)
names its output ``file.gpkg`` plus a layer (``--layer``, default the file's stem);
QGIS's own forms ``file.gpkg|layername=x`` and ``ogr:dbname='file.gpkg'
table="x"`` are read too. Steps that copy a layer's features (nms, regularize,
the accuracy reports) share the rules here: never over the layer they read
(``check_destination``'s ``source``), every field keeps its type, nulls
included (``restore_types``), and GDAL's own columns make way for input fields
named fid or geom (``layer_options``).

The layer is always written to a temporary GeoPackage beside the output
first. When the run is complete it becomes the output: renamed into place
when there was no file, else merged into the existing file in ONE SQLite
transaction (the old layer of that name dropped only with ``overwrite``).
So a failed or cancelled run leaves the existing file byte for byte as it
was, a crash during the merge is rolled back by SQLite, and the merge goes
through SQLite's locks, so a file open in QGIS (WAL mode) is safe.
Measured against writing into the file under a temporary layer name
(README, "Outputs into existing GeoPackages"): that leaves the file changed
after a cancel (the temporary layer must be dropped again: different bytes,
and a leftover layer after a crash) and costs the same; pyogrio can neither
rename nor drop a layer.

The merge copies GDAL's own tables (the layer, its R*Tree, its rows in the
gpkg_* tables, its triggers) as GDAL wrote them, rows before triggers: the
triggers call GDAL's SQL functions (ST_MinX...), which plain SQLite lacks.
"""
import os
import re
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pyogrio

from .bounds import disk_full_message, free_disk
from .errors import UserError

GPKG_APPLICATION_IDS = (0x47504B47, 0x47503130)   # 'GPKG' (1.2+), 'GP10' (1.0)
_OGR_SOURCE = re.compile(r"""^ogr:dbname=(?P<q>['"]?)(?P<path>.+?)(?P=q)(\s+table=(?P<t>['"]?)(?P<layer>.+?)(?P=t)"""
                         r"""(\s+\(\w+\))?)?\s*$""")


def parse_destination(out, layer=None):
    """(GeoPackage path, layer name) of an output; an explicit ``layer`` wins over one in ``out``."""
    text, named = str(out), None
    match = _OGR_SOURCE.match(text)
    if match:
        text, named = match.group("path"), match.group("layer")
    elif "|" in text:
        text, *options = text.split("|")
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "layername" and value:
                named = value
    path = Path(text)
    if layer and named and str(layer) != str(named):
        raise UserError(f"The output '{out}' names the layer '{named}' and the layer option names '{layer}': give one "
                        "of them (or the same name in both).")
    return path, str(layer or named or path.stem)


def layers_of(path):
    """The feature and attribute layers of an existing GeoPackage; a UserError when it is none."""
    try:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            names = [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents ORDER BY table_name")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        if is_locked(exc):
            raise UserError(locked_message(path)) from None
        raise UserError(f"The output '{path}' exists and is not a GeoPackage ({exc}). It is left as it is: "
                        "give another file name ending in .gpkg.") from None
    if app_id not in GPKG_APPLICATION_IDS:
        raise UserError(f"The output '{path}' exists and is an SQLite database, not a GeoPackage. It is left as it "
                        "is: give another file name ending in .gpkg.")
    return names


def is_locked(exc):
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in ("locked", "busy"))


def locked_message(path):
    return (f"The GeoPackage '{path}' is locked by another program (one writing to it now, or holding a "
            "transaction open). It is left as it is: finish or close the editing there (in QGIS: save or "
            "stop the layer's edits), or write to another file, and run again.")


def check_destination(out, layer=None, overwrite=False, source=None):
    """Checks an output can be written before any work: returns (path, layer name). ``source``: the (path,
    layer) the step reads, which the output must not be (checked first: ``overwrite`` does not allow it)."""
    path, name = parse_destination(out, layer)
    if source is not None:
        refuse_input_as_output(path, name, *source)
    if path.suffix.lower() != ".gpkg":
        raise UserError(f"The output '{path}' must be a GeoPackage: give a path ending in .gpkg.")
    if path.is_dir():
        raise UserError(f"The output '{path}' is a folder: give a file path ending in .gpkg.")
    if name.lower().startswith(("gpkg_", "rtree_", "sqlite_")) or not name.strip():
        raise UserError(f"'{name}' cannot name a GeoPackage layer (names starting with gpkg_, rtree_ or sqlite_ "
                        "are reserved). Give another layer name.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"Cannot create the output folder '{path.parent}': '{folder}' is a file. "
                        "Choose a folder you can write to.")
    if not os.access(folder, os.W_OK):
        raise UserError(f"Cannot write into '{folder}'. Choose a folder you can write to.")
    if path.exists():
        existing = layers_of(path)
        same = [n for n in existing if n.lower() == name.lower()]
        if same and not overwrite:
            raise UserError(
                f"The GeoPackage '{path}' already holds a layer '{same[0]}' (layers: {', '.join(existing)}). "
                "Give another layer name (--layer), another file, or ask to overwrite that layer (--overwrite); "
                "the file's other layers are kept either way.")
    return path, name


def refuse_input_as_output(out, out_layer, path, layer_in):
    """Writing the result over the layer it is read from would lose it; another layer of that file is fine."""
    try:
        same_file = out.exists() and Path(path).exists() and out.samefile(path)
    except OSError:
        same_file = False
    if not same_file:
        return
    if layer_in is None or isinstance(layer_in, int):
        names = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
        layer_in = names[layer_in or 0] if names else None
    if layer_in is not None and str(layer_in).lower() == out_layer.lower():
        raise UserError(f"The output layer '{out_layer}' of '{out}' is the input layer. Give another layer name "
                        "(--layer) or file, so the input stays intact.")


def restore_types(field_data, dtypes):
    """(data, null masks) to write fields read by pyogrio: integer and boolean fields with nulls come back
    as float with NaN; they get their type back with a null mask, so the output keeps the input's schema."""
    data, masks = [], []
    for values, dtype in zip(field_data, dtypes):
        values = np.asarray(values)
        dtype = str(dtype)
        if values.dtype.kind == "f" and (dtype.startswith(("int", "uint")) or dtype == "bool"):
            mask = np.isnan(values)
            data.append(np.where(mask, 0, values).astype(dtype))
            masks.append(mask)
        else:
            data.append(values)
            masks.append(None)
    return data, masks


def free_name(base, taken):
    """``base``, or ``base_1``, ``base_2``... : the first not in ``taken`` (compared case-insensitively)."""
    taken = {t.lower() for t in taken}
    name, i = base, 1
    while name.lower() in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def layer_options(fields):
    """GDAL's GeoPackage layer options for writing ``fields`` (None when the defaults do): an input field
    named fid or geom would clash with the columns GDAL adds, so those columns get free names."""
    options = {}
    if any(f.lower() == "fid" for f in fields):
        options["FID"] = free_name("fid", fields)
    if any(f.lower() == "geom" for f in fields):
        options["GEOMETRY_NAME"] = free_name("geometry", fields)
    return options or None


def partial_path(path):
    """The temporary GeoPackage a run writes, beside the output (same file system: rename is atomic)."""
    path = Path(path)
    return path.parent / f".{path.stem}.partial-{uuid.uuid4().hex[:8]}.gpkg"


def remove_partial(tmp):
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.remove(f"{tmp}{suffix}")
        except FileNotFoundError:
            pass


def commit(tmp, path, layer, overwrite=False):
    """Make the layer ``layer`` of the temporary GeoPackage ``tmp`` the output; returns 'created' or 'merged'."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_complete(tmp, path, layer)
    if not path.exists():
        os.replace(tmp, path)
        return "created"
    check_destination(path, layer, overwrite)      # again: the file may have changed during the run
    _merge(tmp, path, layer)
    return "merged"


def _check_complete(tmp, path, layer):
    """The temporary GeoPackage holds the layer. GDAL may leave a file without its gpkg_* tables and report
    nothing when the disk fills as it creates one: that file must neither become the output nor be merged
    (SQLite would then say 'no such table: gpkg_contents', which tells a user nothing)."""
    try:
        con = sqlite3.connect(f"{Path(tmp).resolve().as_uri()}?mode=ro", uri=True)
        try:
            held = con.execute("SELECT 1 FROM gpkg_contents WHERE lower(table_name) = lower(?)", (layer,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        held = None
    if held:
        return
    free = free_disk(path)
    if free is not None and free < 16 * 2 ** 20:
        raise UserError(disk_full_message(path))
    raise UserError(f"The layer '{layer}' could not be written completely beside '{path}' (the temporary file is "
                    "incomplete though the writer reported no error); nothing was changed. Check the disk and that "
                    "you may write into that folder, and run again.")


def _q(name):
    return '"' + str(name).replace('"', '""') + '"'


def _merge(tmp, path, layer):
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        con.execute("ATTACH DATABASE ? AS src", (str(tmp),))
        con.execute("BEGIN IMMEDIATE")
        try:
            old = [r[0] for r in con.execute("SELECT table_name FROM main.gpkg_contents WHERE lower(table_name) = "
                                             "lower(?)", (layer,))]
            for name in old:
                _drop_layer(con, name)
            _copy_layer(con, layer)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:      # SQLite rolls back by itself on a full disk; a second rollback hides why
                con.execute("ROLLBACK")
            raise
        con.execute("DETACH DATABASE src")
    except sqlite3.Error as exc:
        if is_locked(exc):
            raise UserError(locked_message(path)) from None
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
            raise UserError(f"The disk is full: the layer '{layer}' could not be added to '{path}'. The file is left "
                            "as it was and the temporary files are removed. Free some space or write to a file on "
                            "another disk, and run again.") from None
        raise UserError(f"Cannot add the layer '{layer}' to '{path}' ({exc}); the file is left as it was. "
                        "Close programs that are editing it, check the free space, or write to a new file.") from None
    finally:
        con.close()


def _has_table(con, schema, table):
    return con.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
                       (table,)).fetchone() is not None


def _drop_layer(con, name):
    geometry = [r[0] for r in con.execute("SELECT column_name FROM main.gpkg_geometry_columns WHERE table_name = ?",
                                          (name,))]
    con.execute(f"DROP TABLE IF EXISTS main.{_q(name)}")              # its triggers go with it
    for column in geometry:
        con.execute(f"DROP TABLE IF EXISTS main.{_q(f'rtree_{name}_{column}')}")
    for table in ("gpkg_geometry_columns", "gpkg_extensions", "gpkg_ogr_contents", "gpkg_data_columns",
                  "gpkg_metadata_reference", "gpkg_contents"):
        if _has_table(con, "main", table):
            con.execute(f"DELETE FROM main.{table} WHERE table_name = ?", (name,))


def _srs_id(con, srs_id):
    """The main file's id of the temporary file's CRS ``srs_id`` (added when the file lacks it)."""
    row = con.execute("SELECT srs_name, srs_id, organization, organization_coordsys_id, definition, description "
                      "FROM src.gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)).fetchone()
    if row is None:
        return srs_id
    name, sid, org, org_id, definition, description = row
    if str(org).upper() != "NONE":
        found = con.execute("SELECT srs_id FROM main.gpkg_spatial_ref_sys WHERE upper(organization) = upper(?) "
                            "AND organization_coordsys_id = ?", (org, org_id)).fetchone()
    else:
        found = con.execute("SELECT srs_id FROM main.gpkg_spatial_ref_sys WHERE srs_id = ? AND definition = ?",
                            (sid, definition)).fetchone()
    if found:
        return found[0]
    taken = con.execute("SELECT 1 FROM main.gpkg_spatial_ref_sys WHERE srs_id = ?", (sid,)).fetchone()
    if taken:
        sid = max(100000, con.execute("SELECT max(srs_id) FROM main.gpkg_spatial_ref_sys").fetchone()[0] + 1)
    con.execute("INSERT INTO main.gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                (name, sid, org, org_id, definition, description))
    return sid


def _copy_layer(con, layer):
    (name,) = con.execute("SELECT table_name FROM src.gpkg_contents WHERE lower(table_name) = lower(?)",
                          (layer,)).fetchone()
    schema = con.execute("SELECT type, name, sql FROM src.sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL",
                         (name,)).fetchall()
    geometry = con.execute("SELECT column_name, geometry_type_name, srs_id, z, m FROM src.gpkg_geometry_columns "
                           "WHERE table_name = ?", (name,)).fetchall()
    con.execute(next(sql for kind, _, sql in schema if kind == "table"))
    con.execute(f"INSERT INTO main.{_q(name)} SELECT * FROM src.{_q(name)}")
    for kind, _, sql in schema:
        if kind == "index":
            con.execute(sql)
    for column, *_ in geometry:
        rtree = f"rtree_{name}_{column}"
        if _has_table(con, "src", rtree):
            con.execute(f"CREATE VIRTUAL TABLE main.{_q(rtree)} USING rtree(id, minx, maxx, miny, maxy)")
            con.execute(f"INSERT INTO main.{_q(rtree)} SELECT * FROM src.{_q(rtree)}")
    contents = con.execute("SELECT table_name, data_type, identifier, description, last_change, min_x, min_y, "
                           "max_x, max_y, srs_id FROM src.gpkg_contents WHERE table_name = ?", (name,)).fetchone()
    srs = _srs_id(con, contents[9]) if contents[9] is not None else None
    if con.execute("SELECT 1 FROM main.gpkg_contents WHERE identifier = ?", (contents[2],)).fetchone():
        contents = contents[:2] + (name,) + contents[3:]      # identifiers are unique in a GeoPackage
    con.execute("INSERT INTO main.gpkg_contents VALUES (?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
                "?, ?, ?, ?, ?)", contents[:4] + contents[5:9] + (srs,))
    for column, type_name, srs_id, z, m in geometry:
        con.execute("INSERT INTO main.gpkg_geometry_columns VALUES (?, ?, ?, ?, ?, ?)",
                    (name, column, type_name, _srs_id(con, srs_id), z, m))
    extensions = con.execute("SELECT table_name, column_name, extension_name, definition, scope "
                             "FROM src.gpkg_extensions WHERE table_name = ?", (name,)).fetchall() \
        if _has_table(con, "src", "gpkg_extensions") else []
    if extensions and not _has_table(con, "main", "gpkg_extensions"):
        con.execute(con.execute("SELECT sql FROM src.sqlite_master WHERE name = 'gpkg_extensions'").fetchone()[0])
    con.executemany("INSERT INTO main.gpkg_extensions VALUES (?, ?, ?, ?, ?)", extensions)
    counted = _has_table(con, "main", "gpkg_ogr_contents")
    if counted:
        count = con.execute(f"SELECT count(*) FROM main.{_q(name)}").fetchone()[0]
        con.execute("INSERT INTO main.gpkg_ogr_contents VALUES (?, ?)", (name, count))
    for kind, trigger, sql in schema:
        # GDAL's feature-count triggers need gpkg_ogr_contents; a file without it keeps no count.
        if kind == "trigger" and (counted or "feature_count" not in trigger):
            con.execute(sql)
