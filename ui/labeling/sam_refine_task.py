"""Batch refine (rectangle labels -> Segment Anything outlines) as a QGIS background task.

Why a task: refining hundreds of rectangles takes minutes on a CPU. In QGIS's task
manager it shows its progress (the worker's "outline i of N") and a cancel
button, and QGIS stays usable. The work itself happens in the SAM worker
process; this task only waits for its answer. Cancelling sends the worker a
``cancel`` request: it stops between two boxes and answers with the outlines it
has finished, which are kept (one undo step), the other rectangles stay.
"""
import threading

from qgis.core import QgsTask


class RefineTask(QgsTask):
    """Waits, off the main thread, for the worker's answer to one ``refine`` request."""

    def __init__(self, client, count, apply, timeout=1800.0):
        """``apply(ok, payload)`` runs on the main thread when the worker answers (or fails)."""
        super().__init__(f"MaskForge: refine {count} rectangle(s) with Segment Anything", QgsTask.Flag.CanCancel)
        self.client = client
        self.rid = None
        self.outcome = None
        self._apply = apply
        self._answered = threading.Event()
        self._timeout = timeout

    def send(self, **fields):
        """Send the request (main thread); the answer reaches ``answer``."""
        self.client.stepped.connect(self._stepped)
        self.rid = self.client.request("refine", self.answer, **fields)
        return self.rid

    def _stepped(self, percent):
        self.setProgress(percent)

    def answer(self, ok, payload):
        try:
            self.client.stepped.disconnect(self._stepped)
        except TypeError:
            pass
        try:
            self.outcome = self._apply(ok, payload)
        finally:   # whatever applying met, the task ends (else it waits out its timeout in the task manager)
            self._answered.set()

    def answered(self):
        return self._answered.is_set()

    def cancel(self):
        """The task manager's cancel button (main thread): the worker stops between two boxes."""
        if self.rid is not None and not self._answered.is_set() and self.client.running():
            self.client.request("cancel", None, target=self.rid)
        super().cancel()

    def run(self):
        # the worker answers a cancel within one box, with what it finished: wait for it either way
        return self._answered.wait(self._timeout) and self.outcome is not None
