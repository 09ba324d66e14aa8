"""A dialog whose fields are bound to a step's contract (core/contract/): built, defaulted, remembered.

Each field is the contract's parameter of the same key: its widget follows the kind, its label, range,
default and help come from the contract, and a parameter the engine chooses shows that choice as the
field's empty value (read back as None). Values are remembered per step in QgsSettings.
"""
from qgis.core import Qgis, QgsFieldProxyModel, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsDoubleSpinBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox, QgsSpinBox
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QDialog, QLabel, QLineEdit, QVBoxLayout, QWidget

from ...bridge import settings
from ...core.contract.devices import DEVICES
from ...core.contract.devices import HELP as DEVICE_HELP
from ..widgets import elided_combo


class Field:
    def __init__(self, widget, get, put, remember=True):
        self.widget, self.get, self.put, self.remember = widget, get, put, remember



class ContractForm(QDialog):
    """The fields of ``CONTRACT``'s parameters, by key (``self.fields``)."""
    CONTRACT = None      # the step's contract: its fields, defaults, checks and argv
    STEP = ""            # the contract's NAME: where the values are remembered

    def __init__(self, parent=None):
        super().__init__(parent)
        self.fields = {}

    def _add(self, form, key, label, widget, get, put, remember=True, tooltip=None):
        widget.setObjectName(key)
        if tooltip:
            widget.setToolTip(tooltip)
        if form is not None:
            form.addRow(label, widget)
        self.fields[key] = Field(widget, get, put, remember)
        return widget

    def add(self, form, key, label=None, tooltip=None, special=None, **number):
        """The field of the contract's parameter ``key`` (core/contract/): its widget by kind, label, range,
        default, help, and for a parameter the engine chooses when empty, that choice as the empty value."""
        p = self.CONTRACT.param(key)
        label = label or p.label
        tooltip = tooltip or " ".join(t for t in (p.help[:1].upper() + p.help[1:] if p.help else "",
                                                  p.empty_means()) if t) or None
        kind = p.kind
        if kind in ("int", "float"):
            return self._add_number(form, p, label, tooltip, special, **number)
        if kind == "bool":
            return self.add_bool(form, key, label, tooltip=tooltip)
        if kind == "choice":
            return self.add_enum(form, key, label, [c.label for c in p.choices], tooltip=tooltip)
        if kind in ("text", "ints", "folders", "bands"):
            return self.add_text(form, key, label, p.auto or "", tooltip=tooltip)
        if kind in ("file", "folder", "folder_out", "layer_out"):
            mode = {"file": QgsFileWidget.StorageMode.GetFile, "layer_out": QgsFileWidget.StorageMode.SaveFile}.get(
                kind, QgsFileWidget.StorageMode.GetDirectory)
            file_filter = "GeoPackage (*.gpkg)" if kind == "layer_out" else p.file_filter
            return self.add_path(form, key, label, mode, file_filter, tooltip=tooltip)
        if kind in ("raster", "vector"):
            filters = Qgis.LayerFilter.RasterLayer if kind == "raster" else (
                Qgis.LayerFilter.PolygonLayer if p.geometry == "polygon" else Qgis.LayerFilter.HasGeometry)
            widget = self.add_layer(form, key, label, filters, optional=p.optional)
            if tooltip:
                widget.setToolTip(tooltip)
            return widget
        if kind == "field":
            filters = QgsFieldProxyModel.Filter.Numeric if p.numeric else None
            widget = self.add_field(form, key, label, self.fields[p.parent].widget, filters, optional=p.optional)
            if tooltip:
                widget.setToolTip(tooltip)
            return widget
        raise ValueError(f"No dialog field for the {kind} parameter {key}")

    def _add_number(self, form, p, label, tooltip, special, decimals=None, step=None, maximum=None):
        """A spin box over the parameter's range; for a parameter the engine chooses, one step below the range
        shows that choice (``special``, else the contract's words) and reads as None."""
        is_int = p.kind == "int"
        spin = QgsSpinBox() if is_int else QgsDoubleSpinBox()
        increment = 1 if is_int else (step or p.step or 10 ** -min(decimals or p.decimals, 2))
        if not is_int:
            spin.setDecimals(decimals or p.decimals)
            spin.setSingleStep(increment)
        low = p.minimum if p.minimum is not None else (-2 ** 31 + 1 if is_int else -1e12)
        high = maximum if maximum is not None else (p.maximum if p.maximum is not None else
                                                    (2 ** 31 - 1 if is_int else 1e12))
        auto = p.default is None
        slot = low - increment if auto else None     # the "let the engine choose" value
        spin.setRange(slot if auto else low, high)
        if auto:
            spin.setSpecialValueText(special or p.auto.split(":")[0].split(",")[0])
        elif special:
            spin.setSpecialValueText(special)
        spin.setClearValue(slot if auto else p.default)
        if p.suffix:
            spin.setSuffix(p.suffix)
        cast = int if is_int else float

        def get():
            return None if auto and spin.value() <= slot + increment / 2 else cast(spin.value())

        def put(value):
            value = p.read(value)
            spin.setValue(slot if value is None else cast(value))
        return self._add(form, p.key, label, spin, get, put, tooltip=tooltip)

    def add_layer(self, form, key, label, filters, optional=False):
        combo = QgsMapLayerComboBox()
        combo.setFilters(filters)
        combo.setAllowEmptyLayer(optional)
        if optional:
            combo.setLayer(None)

        def put(source):
            previous = combo.currentLayer()
            for layer in QgsProject.instance().mapLayers().values():
                if source and layer.source() == source:
                    combo.setLayer(layer)
                    if combo.currentLayer() is layer:   # not filtered out
                        return
            combo.setLayer(previous)
        return self._add(form, key, label, combo, combo.currentLayer, put)

    def add_field(self, form, key, label, layer_combo, filters=None, optional=True):
        combo = QgsFieldComboBox()
        if filters is not None:
            combo.setFilters(filters)
        combo.setAllowEmptyFieldName(optional)
        combo.setLayer(layer_combo.currentLayer())
        layer_combo.layerChanged.connect(combo.setLayer)
        return self._add(form, key, label, combo, lambda: combo.currentField() or None,
                         lambda name: combo.setField(name or ""))

    def add_bool(self, form, key, label, tooltip=None):
        box = QCheckBox(label)
        if form is not None:
            form.addRow("", box)
        return self._add(None, key, label, box, box.isChecked, lambda v: box.setChecked(bool(v)), tooltip=tooltip)

    def add_enum(self, form, key, label, items, tooltip=None):
        combo = elided_combo(items, tooltip)

        def put(index):
            if 0 <= int(index) < combo.count():
                combo.setCurrentIndex(int(index))
        return self._add(form, key, label, combo, combo.currentIndex, put)

    def add_text(self, form, key, label, placeholder="", tooltip=None):
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        edit.setClearButtonEnabled(True)
        return self._add(form, key, label, edit, lambda: edit.text().strip(), lambda v: edit.setText(str(v or "")),
                         tooltip=tooltip)

    def add_device(self, form, key="DEVICE"):
        """Device field and the device the runtime will really use (asked of the runtime in the background)."""
        from ...bridge.runtime import RuntimeProbe, describe_device, effective_device
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        combo = QComboBox()
        combo.setEditable(True)
        combo.addItems(DEVICES)
        combo.setToolTip(f"{DEVICE_HELP[0].upper()}{DEVICE_HELP[1:]}.")
        label = QLabel("Asking the runtime which devices it has…")
        label.setObjectName("DeviceLabel")
        label.setWordWrap(True)
        layout.addWidget(combo)
        layout.addWidget(label)
        self.device_info = None
        self.device_label = label

        def show():
            if sip.isdeleted(label):
                return
            info = self.device_info
            if info is None:
                return
            if info.get("error"):
                label.setText(f"Runtime: {info['error']}")
                return
            device, problem = effective_device(combo.currentText(), info)
            label.setText(f"Will run on: {describe_device(device, info)}" if device else f"⚠ {problem}")

        def probed(info):
            self.device_info = info
            show()
        self.probe = RuntimeProbe(self)
        self.probe.finished.connect(probed)
        combo.currentTextChanged.connect(lambda _: show())
        self.fields[key] = Field(combo, lambda: combo.currentText().strip() or "auto", combo.setCurrentText)
        combo.setObjectName(key)
        form.addRow("Device", box)
        self.probe.start()
        return combo

    def add_path(self, form, key, label, mode, file_filter="", tooltip=None):
        widget = QgsFileWidget()
        widget.setStorageMode(mode)
        if file_filter:
            widget.setFilter(file_filter)
        widget.setDialogTitle(label.rstrip(":"))
        return self._add(form, key, label, widget, lambda: widget.filePath().strip(),
                         lambda v: widget.setFilePath(str(v or "")), tooltip=tooltip)

    def raw(self, key):
        return self.fields[key].get()

    def set(self, key, value):
        self.fields[key].put(value)

    def default(self, key):
        """The field's value before the person chose one: the contract's default (a choice as its index)."""
        if key == "DEVICE":
            return settings.device()
        try:
            p = self.CONTRACT.param(key)
        except KeyError:
            return None
        return p.choice_index(p.default) if p.kind == "choice" else p.default

    def restore(self):
        for key, field in self.fields.items():
            if not field.remember:
                continue
            default = self.default(key)
            if isinstance(field.widget, QgsMapLayerComboBox):
                field.put(settings.dialog_value(self.STEP, key, ""))
                continue
            if default is None:
                default = ""
            field.put(settings.dialog_value(self.STEP, key, default))

    def remember(self):
        for key, field in self.fields.items():
            if not field.remember:
                continue
            value = field.get()
            if isinstance(value, (QgsRasterLayer, QgsVectorLayer)):
                value = value.source()
            if isinstance(value, (list, tuple)):
                continue
            settings.set_dialog_value(self.STEP, key, value)
