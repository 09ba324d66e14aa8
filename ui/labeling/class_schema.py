"""The class schema of a labeling session: classes with value, name and colour.

Standard library only (no QGIS, no Qt) so the rules can be tested on their own.
A schema is saved in the shape of the ``Classes`` list of an Esri model
definition (``{"Classes": [{"Value": 1, "Name": "tent", "Color": [255, 0, 0]}]}``):
the same reader takes a saved schema, the ``.emd`` of a model package (or a
``.dlpk`` holding one) and the ``esri_model_definition.emd`` of an export, so the
classes can be made to match the model that is going to be fine-tuned.
"""
import json
import os
import zipfile
from dataclasses import dataclass

# The engine's palette (core/chips.py), so a class keeps its colour from labels to exports.
PALETTE = [(255, 0, 0), (0, 170, 255), (255, 200, 0), (0, 200, 80), (200, 0, 255),
           (255, 120, 0), (0, 255, 220), (255, 0, 140), (120, 80, 0), (140, 140, 255)]
MAX_EMD_BYTES = 5 * 1024 * 1024   # a model definition is a few kB; anything larger is not one


class SchemaError(ValueError):
    """Bad schema input; the message says what to fix."""


def default_color(value):
    return PALETTE[(int(value) - 1) % len(PALETTE)]


@dataclass
class LabelClass:
    value: int
    name: str
    color: tuple

    def to_dict(self):
        return {"Value": self.value, "Name": self.name, "Color": list(self.color)}


def _as_value(value, where=""):
    # bool is an int subclass; True as a class value is a typing slip, not class 1
    if isinstance(value, bool):
        raise SchemaError(f"Class value {value!r}{where} is not a whole number.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise SchemaError(f"Class value {value!r}{where} is not a whole number.")
    if value < 1:
        # 0 is the background of every exported mask, and training wants values from 1
        raise SchemaError(f"Class value {value}{where} must be 1 or more (0 is the background).")
    return value


def _as_name(name, where=""):
    if not isinstance(name, (str, int)) or isinstance(name, bool):
        raise SchemaError(f"Class name {name!r}{where} is not text.")
    name = str(name).strip()
    if not name:
        raise SchemaError(f"A class name{where} is empty.")
    return name


def _as_color(color, where=""):
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) == 6:
            try:
                return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
            except ValueError:
                pass
        raise SchemaError(f"Colour {color!r}{where} is not '#rrggbb' or [r, g, b].")
    try:
        parts = [int(c) for c in color]
    except (TypeError, ValueError):
        raise SchemaError(f"Colour {color!r}{where} is not [r, g, b].") from None
    if len(parts) not in (3, 4) or any(not 0 <= c <= 255 for c in parts):
        raise SchemaError(f"Colour {color!r}{where} must be 3 numbers from 0 to 255.")
    return tuple(parts[:3])


class ClassSchema:
    """An ordered set of classes, unique by value and by name (case-insensitive).

    Listeners added with ``subscribe`` are called with no arguments after every
    change, which is how the layer style follows the schema.
    """

    def __init__(self, classes=()):
        self._classes = []
        self._listeners = []
        for c in classes:
            self._insert(LabelClass(_as_value(c.value), _as_name(c.name), _as_color(c.color)))

    # -- reading
    def __iter__(self):
        return iter(list(self._classes))

    def __len__(self):
        return len(self._classes)

    def __contains__(self, value):
        return self.get(value) is not None

    def values(self):
        return [c.value for c in self._classes]

    def get(self, value):
        for c in self._classes:
            if c.value == value:
                return c
        return None

    def at(self, position):
        """The class at a 0-based position (number keys pick classes by position), or None."""
        return self._classes[position] if 0 <= position < len(self._classes) else None

    def name_of(self, value):
        c = self.get(value)
        return c.name if c else None

    def next_value(self):
        return max(self.values(), default=0) + 1

    # -- changing
    def subscribe(self, listener):
        self._listeners.append(listener)

    def unsubscribe(self, listener):
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self):
        for listener in list(self._listeners):
            listener()

    def _check_name_free(self, name, except_value=None):
        for c in self._classes:
            if c.value != except_value and c.name.casefold() == name.casefold():
                raise SchemaError(f"There is already a class named '{c.name}' (value {c.value}).")

    def _insert(self, cls):
        if self.get(cls.value) is not None:
            raise SchemaError(f"Class value {cls.value} is used twice; each class needs its own value.")
        self._check_name_free(cls.name)
        self._classes.append(cls)
        self._classes.sort(key=lambda c: c.value)

    def add(self, name=None, value=None, color=None):
        value = self.next_value() if value is None else _as_value(value)
        if self.get(value) is not None:
            raise SchemaError(f"There is already a class with value {value} ('{self.get(value).name}').")
        if name is None:
            name = f"Class {value}"
            n = 2
            while any(c.name.casefold() == name.casefold() for c in self._classes):
                name, n = f"Class {value} ({n})", n + 1
        cls = LabelClass(value, _as_name(name), default_color(value) if color is None else _as_color(color))
        self._insert(cls)
        self._changed()
        return cls

    def _require(self, value):
        cls = self.get(value)
        if cls is None:
            raise SchemaError(f"There is no class with value {value}.")
        return cls

    def rename(self, value, name):
        cls = self._require(value)
        name = _as_name(name)
        self._check_name_free(name, except_value=value)
        if name != cls.name:
            cls.name = name
            self._changed()

    def recolor(self, value, color):
        cls = self._require(value)
        color = _as_color(color)
        if color != cls.color:
            cls.color = color
            self._changed()

    def remove(self, value):
        cls = self._require(value)
        self._classes.remove(cls)
        self._changed()
        return cls

    def replace(self, other):
        """Take the classes of another schema (a loaded file), keeping the listeners."""
        self._classes = [LabelClass(c.value, c.name, c.color) for c in other]
        self._changed()

    def merge(self, other):
        """Add the classes of ``other`` whose values are missing here; return how many were added."""
        added = 0
        for c in other:
            if self.get(c.value) is None:
                name = c.name
                if any(k.name.casefold() == name.casefold() for k in self._classes):
                    name = f"{name} ({c.value})"
                self._insert(LabelClass(c.value, name, c.color))
                added += 1
        if added:
            self._changed()
        return added

    # -- files
    def to_dict(self):
        return {"Classes": [c.to_dict() for c in self._classes]}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path):
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_json() + "\n")
            os.replace(tmp, path)   # a crash mid-write leaves the old file, never half a file
        except OSError as exc:
            raise SchemaError(f"Cannot write the class schema to '{path}': {exc.strerror or exc}.") from None

    @classmethod
    def from_dict(cls, data, source="the schema"):
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict) and "Classes" in data:
            items = data["Classes"]
        else:
            raise SchemaError(f"{source} has no 'Classes' list (expected {{\"Classes\": [{{\"Value\": 1, "
                              f"\"Name\": \"tent\", \"Color\": [255, 0, 0]}}]}}).")
        if not isinstance(items, list):
            raise SchemaError(f"'Classes' in {source} is not a list.")
        schema = cls()
        for i, item in enumerate(items, 1):
            where = f" (class #{i} in {source})"
            if not isinstance(item, dict):
                raise SchemaError(f"Class #{i} in {source} is not an object with Value, Name and Color.")
            keys = {k.lower(): v for k, v in item.items()}
            if "value" not in keys:
                raise SchemaError(f"Class #{i} in {source} has no 'Value'.")
            value = _as_value(keys["value"], where)
            name = _as_name(keys.get("name", value), where)
            color = keys.get("color")
            color = default_color(value) if color is None else _as_color(color, where)
            try:
                schema._insert(LabelClass(value, name, color))
            except SchemaError as exc:
                raise SchemaError(f"{exc} ({source})") from None
        if not len(schema):
            raise SchemaError(f"{source} lists no classes.")
        return schema

    @classmethod
    def from_json(cls, text, source="the schema"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SchemaError(f"{source} is not valid JSON: {exc}.") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path):
        """A saved schema (.json), a model definition (.emd) or a model package (.dlpk)."""
        name = os.path.basename(str(path))
        if not os.path.isfile(path):
            raise SchemaError(f"The file '{path}' does not exist.")
        if str(path).lower().endswith(".dlpk") or zipfile.is_zipfile(path):
            return cls._from_dlpk(path)
        if os.path.getsize(path) > MAX_EMD_BYTES:
            raise SchemaError(f"'{name}' is too large to be a class schema or a model definition.")
        try:
            with open(path, encoding="utf-8-sig") as f:   # Esri tools write a BOM now and then
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"Cannot read '{name}': {exc}.") from None
        return cls.from_json(text, f"'{name}'")

    @classmethod
    def _from_dlpk(cls, path):
        # A package is data: only the .emd member is read, nothing is extracted or run.
        name = os.path.basename(str(path))
        try:
            with zipfile.ZipFile(path) as z:
                emds = [m for m in z.infolist() if m.filename.lower().endswith(".emd") and not m.is_dir()]
                if not emds:
                    raise SchemaError(f"The package '{name}' holds no .emd model definition.")
                member = min(emds, key=lambda m: m.filename.count("/"))
                if member.file_size > MAX_EMD_BYTES:
                    raise SchemaError(f"'{member.filename}' in '{name}' is too large to be a model definition.")
                text = z.read(member).decode("utf-8-sig")
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"Cannot read the package '{name}': {exc}.") from None
        return cls.from_json(text, f"'{member.filename}' in '{name}'")
