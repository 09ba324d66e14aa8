"""Messages to the user: QGIS's log panel (tab "MaskForge") and the message bar, with or without a QGIS window.

Thread-safe for ``log`` (a task's worker thread logs); the message bar is touched on the main thread only.
Where there is no window (qgis_process, scripts, the Processing algorithms run headless) a message goes to
the log alone.
"""
from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QPushButton

TAG = "MaskForge"


def log(message, level=Qgis.MessageLevel.Info):
    QgsMessageLog.logMessage(str(message), TAG, level)


def message_bar(iface=None):
    """The message bar of ``iface`` (a dock's own), else QGIS's window's; None without a window."""
    if iface is None:
        from qgis.utils import iface   # None in qgis_process and plain scripts
    return iface.messageBar() if iface is not None else None


def push(text, level=Qgis.MessageLevel.Info, more=None, duration=None, iface=None):
    """Message bar (when there is one) and log; a failure keeps its details under 'More'.
    By default warnings and errors stay until closed, the rest for 10 s."""
    log(text if not more else f"{text}\n{more}", level)
    bar = message_bar(iface)
    if bar is None:
        return
    if duration is None:
        duration = 0 if level in (Qgis.MessageLevel.Critical, Qgis.MessageLevel.Warning) else 10
    if more:
        bar.pushMessage(TAG, text, more, level, duration)
    else:
        bar.pushMessage(TAG, text, level, duration)


def push_with_button(text, button_text, path, level=Qgis.MessageLevel.Success, duration=0):
    """A message offering to open a file or folder (report, export) with the desktop's application."""
    log(f"{text} ({path})", level)
    bar = message_bar()
    if bar is None:
        return None
    item = bar.createMessage(TAG, text)
    button = QPushButton(button_text, item)
    button.setObjectName("MaskForgeOpenButton")
    button.clicked.connect(lambda checked=False, p=path: open_path(p))
    item.layout().addWidget(button)
    bar.pushWidget(item, level, duration)
    return item


def open_path(path):
    return QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
