"""A step's parameters, each defined once: name, kind, default, range, choices, label and help.

Everything else is generated from these definitions: the engine's command-line options
(``add_arguments``), the Processing algorithms' parameters (algorithms/parameters.py), the dialogs'
fields (ui/steps/fields.py), and the engine argv a job is started with (``Step.to_args``).

Conventions, each once:
- ``None`` is "let the engine choose" (it says what it chose and why in its log). A default of None
  makes the parameter optional everywhere; ``auto`` says in words what None does.
- ``key`` is the Processing parameter name. Saved Model Designer models, scripts and remembered dialog
  values use these names, so they never change; values saved by MaskForge 0.3 and earlier used a
  sentinel (0 or -1) for "let the engine choose": ``legacy_auto`` reads it as None.
- A choice is stored as its index in Processing (as Processing stores enums) and as the engine's
  value everywhere else; ``Param.read`` accepts either.
"""
from dataclasses import dataclass, field

from .invalid import InvalidInput

# What a parameter holds. Paths are strings (an OGR source may carry '|layername=').
KINDS = {
    "raster",       # a raster: a path or any GDAL source
    "vector",       # a vector source (features)
    "field",        # a field name of the vector parameter ``parent``
    "file",         # an existing file
    "folder",       # an existing folder
    "folders",      # existing folders, ';'-separated in text (the engine takes the flag once per folder)
    "folder_out",   # an output folder
    "layer_out",    # an output GeoPackage layer ('path', 'path|layername=x' or Processing's 'ogr:...')
    "int", "float",
    "bool",         # a switch: the flag is given when the value equals ``when``
    "choice",       # one of ``choices``
    "text",
    "ints",         # whole numbers from 1 up, ',' separated in text; ``count`` of them when set
    "bands",        # raster band numbers from 1 up (a multiple band parameter in Processing)
    "extent",       # (xmin, ymin, xmax, ymax) in the raster's CRS
    "pair",         # (x, y) pixels, 'X,Y' on the command line
}


@dataclass(frozen=True)
class Choice:
    value: object     # what the engine gets; None: the flag is left out (the engine's own choice)
    label: str


@dataclass(frozen=True)
class Param:
    key: str
    kind: str
    label: str
    default: object = None
    flag: str = None              # the engine's option; None: a QGIS-side parameter the step turns into options
    minimum: float = None
    maximum: float = None
    choices: tuple = ()
    auto: str = ""                # what None does, e.g. "the package's"
    help: str = ""
    required: bool = False
    advanced: bool = False
    parent: str = None            # a field's vector parameter, the bands' raster
    legacy_auto: object = None    # the value 0.3 and earlier saved for "let the engine choose"
    file_filter: str = ""
    when: bool = True             # bool: the flag is given when the value is this
    count: int = None             # ints: exactly this many
    step: float = None            # widgets' increment for floats
    decimals: int = 2
    suffix: str = ""
    in_qgis: bool = True          # False: an engine option only (threads, layer name...)
    geometry: str = "any"         # vector: "polygon" or "any"
    numeric: bool = False         # field: numbers only
    noun: str = ""                # what messages call it, when not the label

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert self.kind != "choice" or self.choices, self.key

    @property
    def optional(self):
        return not self.required

    @property
    def dest(self):
        """The engine's argparse attribute name."""
        return self.flag.lstrip("-").replace("-", "_") if self.flag else None

    def choice_index(self, value):
        """The Processing index of a choice value (or of an index given as such)."""
        for i, c in enumerate(self.choices):
            if c.value == value:
                return i
        return None

    def read(self, raw):
        """``raw`` as this parameter's value: the Processing/dialog form (indexes, text, legacy sentinels)
        becomes the engine's (choice values, numbers, tuples, None for the engine's choice)."""
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return self.default
        kind = self.kind
        if kind in ("int", "float"):
            # Remembered values come back as text ('0.0'): compare the number with the old sentinel.
            value = int(float(raw)) if kind == "int" else float(raw)
            return None if self.legacy_auto is not None and value == self.legacy_auto else value
        if kind == "bool":
            return raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes")
        if kind == "choice":
            values = [c.value for c in self.choices]
            if raw in values and not isinstance(raw, bool):
                return raw
            try:
                return self.choices[int(raw)].value
            except (ValueError, TypeError, IndexError):
                raise InvalidInput(f"{self.label}: '{raw}' is not one of "
                                   f"{', '.join(str(v) for v in values if v is not None)}.") from None
        if kind in ("ints", "bands"):
            return ints(raw, self.noun or self.label, self.count, example=self.help_example())
        if kind == "folders":
            parts = raw if isinstance(raw, (list, tuple)) else str(raw).split(";")
            return tuple(str(p).strip() for p in parts if str(p).strip()) or self.default
        if kind == "extent":
            return tuple(float(v) for v in raw) if raw else None
        return raw.strip() if isinstance(raw, str) else raw

    def empty_means(self):
        """What an empty value does, in words, for help texts; 0.3's sentinel when a user may still type it."""
        if not self.auto:
            return ""
        text = f"Empty: {self.auto}."
        if self.legacy_auto is not None and self.minimum is not None and self.legacy_auto >= self.minimum:
            text += f" {self.legacy_auto:g} means the same (as in MaskForge 0.3)."
        return text

    def help_example(self):
        return {1: "1", 3: "1,2,3", 5: "8,16,32,64,128"}.get(self.count or 3, "1,2,3")

    def check(self, value):
        """The range and presence rules every caller shares; a step's own rules are in its check()."""
        if value is None:
            if self.required:
                raise InvalidInput(f"Choose the {self.label[0].lower() + self.label[1:]}.")
            return
        if self.kind in ("int", "float"):
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                span = (f"between {_num(low)} and {_num(high)}" if low is not None and high is not None
                        else f"at least {_num(low)}" if low is not None else f"at most {_num(high)}")
                auto = f" (leave it empty for {self.auto})" if self.auto else ""
                raise InvalidInput(f"{self.label} must be {span}, not {_num(value)}{auto}.")

    def to_args(self, value):
        """This parameter's part of the engine's command line."""
        if not self.flag or value is None:
            return []
        kind = self.kind
        if kind == "bool":
            return [self.flag] if bool(value) == self.when else []
        if kind in ("ints", "bands"):
            return [self.flag, ",".join(str(v) for v in value)] if value else []
        if kind == "folders":
            return [a for folder in value for a in (self.flag, absolute(folder))]
        if kind == "extent":
            # One token: argparse takes '-9127116.2,...' (west of Greenwich, south of the equator) for an option.
            return [f"{self.flag}={','.join(str(float(v)) for v in value)}"]
        if kind == "pair":
            return [self.flag, f"{int(value[0])},{int(value[1])}"]
        if kind in ("raster", "vector", "file", "folder", "folder_out", "layer_out"):
            return [self.flag, absolute(value)]
        return [self.flag, value]


def _num(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def ints(raw, what, count=None, example="1,2,3"):
    """'1, 2,3' or [1, 2, 3] -> (1, 2, 3): whole numbers from 1 up. Checked before a run: argparse
    would reject junk with a usage message the user cannot relate to the field they typed in."""
    parts = [str(p).strip() for p in (raw if isinstance(raw, (list, tuple)) else str(raw).split(",")) if str(p).strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values:
        if not parts:
            return None
        values = (0,)
    if min(values) < 1:
        raise InvalidInput(f"{what} '{raw}' is not a comma-separated list of whole numbers from 1 up "
                           f"(e.g. '{example}').")
    if count and len(values) != count:
        raise InvalidInput(f"{what} '{raw}' has {len(values)} value(s); give {count}, one per FPN level "
                           f"(e.g. '{example}').")
    return values


def absolute(path):
    """The worker runs in the plugin folder: hand it absolute paths (an OGR source keeps its '|options')."""
    import os
    if not path:
        return path
    file_part, sep, options = str(path).partition("|")
    if file_part.startswith("ogr:"):
        return str(path)
    if os.path.exists(file_part) or not os.path.isabs(file_part) and "://" not in file_part:
        file_part = os.path.abspath(file_part)
    return file_part + sep + options


@dataclass
class Step:
    """One job of a step: its values, read from the Processing/dialog form once (``Step.of``).

    A subclass names its engine step and its parameters; ``to_args`` is the engine's argv and ``check``
    the engine's own messages for what can be seen before a run."""
    values: dict = field(default_factory=dict)

    NAME = ""
    PARAMS = ()

    @classmethod
    def param(cls, key):
        for p in cls.PARAMS:
            if p.key == key:
                return p
        raise KeyError(key)

    @classmethod
    def of(cls, raw):
        """The job of ``raw`` (Processing names -> what a dialog or Processing holds); keys not given take the
        parameter's default; keys the step does not define are kept (INPUT_RASTER as the engine reads it...)."""
        raw = dict(raw or {})
        values = {k: v for k, v in raw.items() if k not in {p.key for p in cls.PARAMS}}
        for p in cls.PARAMS:
            values[p.key] = p.read(raw.get(p.key))
        return cls(values)

    def __getitem__(self, key):
        return self.values.get(key)

    def check_ranges(self):
        for p in self.PARAMS:
            p.check(self.values.get(p.key))

    def to_args(self):
        args = []
        for p in self.PARAMS:
            args += p.to_args(self.values.get(p.key))
        return args


def add_arguments(parser, step, types=None):
    """The engine's options of ``step`` on an argparse parser, from the same definitions.

    ``types``: the engine's own parsers by kind (an extent is checked by core/bounds.py)."""
    types = types or {}
    for p in step.PARAMS:
        if not p.flag:
            continue
        text = p.help or p.label
        if p.auto:
            text += f" (default: {p.auto})"
        elif p.default is not None and p.default is not False and p.default != ():
            text += f" (default {p.default})"
        text = text.replace("%", "%%")
        if p.kind == "bool":
            parser.add_argument(p.flag, action="store_true", help=text)   # '--no-nms' sets no_nms
            continue
        kwargs = {"help": text, "default": p.default}
        if p.required:
            kwargs["required"] = True
        if p.key in types:      # the engine parses it itself (a method or CLASSVALUE:METHOD,...)
            kwargs["type"] = types[p.key]
        elif p.kind in types:
            kwargs["type"] = types[p.kind]
        elif p.kind == "int":
            kwargs["type"] = int
        elif p.kind == "float":
            kwargs["type"] = float
        if p.kind == "choice" and p.key not in types:
            kwargs["choices"] = [c.value for c in p.choices if c.value is not None]
        if p.kind == "folders":
            kwargs["action"] = "append"
            kwargs["default"] = None
        parser.add_argument(p.flag, **kwargs)


def layer_output(label):
    """A GeoPackage layer written beside the user's layers: the destination, its replace switch, the layer name."""
    return (Param("OVERWRITE", "bool", "Replace an existing layer of that name (the GeoPackage's other layers are "
                  "kept)", False, flag="--overwrite"),
            Param("OUTPUT", "layer_out", label, flag="--out", required=True,
                  help="output GeoPackage ('path|layername=x' ok): a new file, or a new layer of an existing one "
                       "(its other layers are kept)"),
            Param("layer", "text", "Layer name", flag="--layer", in_qgis=False,
                  auto="the one in --out, else the file's stem", help="layer name in the GeoPackage"))


def folder_output(files):
    """Files written into a folder the user picks, other files there left alone."""
    return (Param("OVERWRITE", "bool", "Replace earlier outputs of the same names in the folder", False,
                  flag="--overwrite"),
            Param("OUTPUT_FOLDER", "folder_out", "Output folder", flag="--out-dir", required=True,
                  help=f"folder for {files}"))
