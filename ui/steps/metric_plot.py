"""Loss and AP per epoch, drawn as training goes (fed by JobTask.metric).

Losses share the left axis; AP (0..1) has the right one, so a falling loss and a
rising AP read at a glance. Epoch 0 is the base model before fine-tuning.
"""
import math

from qgis.PyQt.QtCore import QPointF, QRectF, Qt
from qgis.PyQt.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qgis.PyQt.QtWidgets import QSizePolicy, QWidget

# (metric key, legend, colour, right axis)
SERIES = [("train_loss", "train loss", QColor(31, 119, 180), False),
          ("valid_loss", "valid loss", QColor(255, 127, 14), False),
          ("mask_ap", "mask AP", QColor(44, 160, 44), True),
          ("bbox_ap", "box AP", QColor(148, 103, 189), True)]

PLACEHOLDER = "The curves appear when the first epoch ends."


def _nice_max(value):
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


class MetricPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("MaskForgeMetricPlot")
        self.records = []
        self.planned_epochs = None
        self.setMinimumSize(320, 220)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def clear(self, planned_epochs=None):
        self.records = []
        self.planned_epochs = planned_epochs
        self.update()

    def add(self, record):
        if isinstance(record, dict) and record.get("epoch") is not None:
            self.records = [r for r in self.records if r.get("epoch") != record["epoch"]] + [dict(record)]
            self.records.sort(key=lambda r: r["epoch"])
            self.update()

    def set_records(self, records):
        self.records = []
        for r in records:
            self.add(r)
        self.update()

    def _values(self, key):
        return [(r["epoch"], float(r[key])) for r in self.records
                if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        font = QFont(self.font())
        p.setFont(font)
        fm = p.fontMetrics()
        left, right, top, bottom = fm.horizontalAdvance("00.00") + 14, fm.horizontalAdvance("0.00") + 14, \
            fm.height() * 3 + 12, fm.height() + 8
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        text_pen = QPen(self.palette().text().color())
        grid_pen = QPen(QColor(0, 0, 0, 40))

        # Legend (top), one entry per series, on as many lines as the width needs.
        x, line = left, 0
        for key, name, colour, right_axis in SERIES:
            width = 20 + fm.horizontalAdvance(name) + 14
            if x + width > self.width() and x > left:
                x, line = left, line + 1
            y = 4 + line * (fm.height() + 2)
            p.setPen(QPen(colour, 3))
            p.drawLine(QPointF(x, y + fm.height() / 2), QPointF(x + 16, y + fm.height() / 2))
            p.setPen(text_pen)
            p.drawText(QPointF(x + 20, y + fm.ascent()), name)
            x += width
        p.drawText(QRectF(0, top - fm.height() - 4, left - 6, fm.height()), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, "loss")
        p.drawText(QRectF(plot.right() + 6, top - fm.height() - 4, right, fm.height()),
                   Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, "AP")

        loss_points = self._values("train_loss") + self._values("valid_loss")
        loss_max = _nice_max(max((v for _, v in loss_points), default=1.0))
        last_epoch = max([r["epoch"] for r in self.records] + [self.planned_epochs or 1, 1])
        first_epoch = min([r["epoch"] for r in self.records] + [1])

        def px(epoch):
            span = max(1, last_epoch - first_epoch)
            return plot.left() + plot.width() * (epoch - first_epoch) / span

        def py(value, right_axis):
            top_value = 1.0 if right_axis else loss_max
            return plot.bottom() - plot.height() * max(0.0, min(1.0, value / top_value))

        # Axes and grid.
        for i in range(5):
            y = plot.bottom() - plot.height() * i / 4
            p.setPen(grid_pen)
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(text_pen)
            p.drawText(QRectF(0, y - fm.height() / 2, left - 6, fm.height()), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"{loss_max * i / 4:.3g}")
            p.drawText(QRectF(plot.right() + 6, y - fm.height() / 2, right - 6, fm.height()),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"{i / 4:.2f}")
        p.setPen(text_pen)
        p.drawRect(plot)
        step = max(1, math.ceil((last_epoch - first_epoch + 1) / 10))
        for epoch in range(first_epoch, last_epoch + 1, step):
            p.drawText(QRectF(px(epoch) - 20, plot.bottom() + 2, 40, fm.height()), Qt.AlignmentFlag.AlignCenter, str(epoch))

        if not self.records:
            # On a box of its own, wrapped to the plot: the grid and axis labels are not drawn over.
            flags = int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap)
            inner = plot.adjusted(8, 8, -8, -8)
            box = QRectF(fm.boundingRect(inner.toRect(), flags, PLACEHOLDER)).adjusted(-6, -4, 6, 4)
            p.fillRect(box, self.palette().base())
            p.drawText(inner, flags, PLACEHOLDER)
            p.end()
            return
        for key, _, colour, right_axis in SERIES:
            points = [QPointF(px(e), py(v, right_axis)) for e, v in self._values(key)]
            if not points:
                continue
            p.setPen(QPen(colour, 2))
            path = QPainterPath(points[0])
            for point in points[1:]:
                path.lineTo(point)
            p.drawPath(path)
            p.setBrush(colour)
            for point in points:
                p.drawEllipse(point, 3, 3)
            p.setBrush(Qt.BrushStyle.NoBrush)
        p.end()
