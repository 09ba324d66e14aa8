"""What a long MaskForge script says on the console: the plan, each phase, its progress, and Ctrl-C.

Shared by the demo, ``bench.py`` and ``gpu_check.py`` (scripts/ is on their path):

    console = Console("bench", partial="the name=value lines above; files in bench_output/")
    with console.session():                       # Ctrl-C: what finished, where partial results are; exit 130
        console.say("...")                        # a line (above the bar when one is shown)
        with console.phase("train step", expected=20, output="bench_output/chips"):
            bar = console.progress()              # fed with the engine's own events
            run_job(python, "train", args, on_event=bar.event, is_cancelled=console.stop_requested)
            bar.close()

Progress comes only from the engine's JSON events (``core/progress.py``: ``progress`` with percent and
message, ``log``, ``metric``), received through ``runner.run_job``'s ``on_event`` or relayed by a
Processing feedback; tqdm turns them into elapsed time and time left (from the recent rate of progress,
its exponential moving average). On a terminal: one updating line per phase. Otherwise (a pipe, a log
file): one line per training epoch (the ``metric`` event) or, for steps without epochs, per 10 %.

tqdm is imported only when a bar is made: ``gpu_check.py`` runs on a Python that may have nothing but
torch and torchvision, and uses phases alone.
"""
import contextlib
import os
import re
import shutil
import signal
import sys
import threading
import time

QUIET_SECONDS = 10.0
EPOCH_OF = re.compile(r"epoch \d+/(\d+)")
EPOCH_FIELDS = (("train_loss", "train loss"), ("valid_loss", "valid loss"), ("mask_ap", "mask AP"))


def about(seconds):
    """A duration as a person says it: 'about 40 s', 'about 7 min', 'about 1 h 20 min'."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"about {max(5, 5 * round(seconds / 5))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


def clock(seconds):
    """Elapsed seconds as m:ss (h:mm:ss past an hour)."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def machine():
    """'CPU, 2 cores' without importing torch (the QGIS side never does); the caller adds the GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores, f"CPU, {cores} core{'s' if cores != 1 else ''}"


class Console:
    """The voice of one long script: phases with their expected durations, progress bars, the interrupt."""

    def __init__(self, script, stream=None, interactive=None, partial=None):
        self.script = script
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.partial = partial            # where partial results are, said on Ctrl-C
        self.finished = []                # (phase, seconds, output)
        self.current = None               # (phase, start, output)
        self.started = time.monotonic()
        self._bar = None
        self._stop = False
        self.expected = {}                # phase -> expected seconds, from plan()

    def plan(self, expected):
        """The phases to come and their expected seconds (None: unknown): phases are numbered [k/n], and
        each end says the time left, the expectations scaled by how the finished phases compared."""
        self.expected = dict(expected)
        return sum(v for v in self.expected.values() if v)

    def left(self):
        """Expected seconds of the phases not finished, scaled by actual/expected of the finished ones."""
        done = {name: seconds for name, seconds, _ in self.finished}
        known = [(done[n], e) for n, e in self.expected.items() if n in done and e]
        scale = sum(a for a, _ in known) / sum(e for _, e in known) if known else 1.0
        return scale * sum(e for n, e in self.expected.items() if n not in done and e)

    # -- lines ----------------------------------------------------------
    def say(self, text=""):
        if self._bar is not None:
            self._bar.write(text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    # -- phases ---------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name, expected=None, output=None):
        """Announce a phase and its expected seconds; record how long it took (for the summary and Ctrl-C)."""
        self.check_stop()    # a Ctrl-C between phases must not let the next one start
        expected = expected or self.expected.get(name)
        number = f"[{len(self.finished) + 1}/{len(self.expected)}] " if name in self.expected else ""
        self.say(f"== {number}{name}" + (f" ({about(expected)})" if expected else ""))
        self.current = (name, time.monotonic(), output)
        yield
        self.close_bar()
        self.check_stop()
        seconds = time.monotonic() - self.current[1]
        self.finished.append((name, seconds, output))
        self.current = None
        left = self.left() if name in self.expected else 0
        self.say(f"   done in {clock(seconds)}" + (f"; {about(left)} left in all" if left else ""))

    def seconds(self):
        return {name: round(seconds, 1) for name, seconds, _ in self.finished}

    # -- progress -------------------------------------------------------
    def progress(self):
        """A bar for the current phase, fed with the engine's events (``bar.event``) or percents."""
        self.close_bar()
        try:
            self._bar = EngineProgress(self)
        except ImportError:
            sys.exit(f"{self.script}: the progress display needs tqdm (requirements-dev.txt): run `make setup`.")
        return self._bar

    def close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- Ctrl-C ---------------------------------------------------------
    def stop_on_interrupt(self, what="the current step", on_stop=None):
        """First Ctrl-C asks the running engine job to stop cleanly (``stop_requested`` turns true, which
        ``run_job``'s ``is_cancelled`` or a Processing feedback's cancel passes on); a second quits at once.

        For scripts whose work runs in worker processes of their own session (runner.py starts each job
        so), where a plain KeyboardInterrupt would not reach the job. ``on_stop()`` is called at the first
        Ctrl-C (e.g. to cancel a Processing feedback)."""
        def handler(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            if on_stop:
                on_stop()
            self.say(f"\nCtrl-C: stopping {what} cleanly (press Ctrl-C again to quit at once).")
        signal.signal(signal.SIGINT, handler)

    def stop_requested(self):
        return self._stop

    def check_stop(self):
        if self._stop:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def session(self):
        """The whole run: on Ctrl-C say what finished, what was interrupted and where partial results are;
        exit status 130 (the shell's for SIGINT)."""
        try:
            yield self
        except KeyboardInterrupt:
            self.close_bar()
            self.say("")
            self.say(self.interrupt_message())
            sys.exit(130)

    def interrupt_message(self):
        lines = [f"{self.script}: interrupted after {clock(time.monotonic() - self.started)}."]
        if self.current:
            name, start, output = self.current
            lines.append(f"  interrupted: {name} (after {clock(time.monotonic() - start)})"
                         + (f"; its partial output: {output}" if output else ""))
        if self.finished:
            lines.append("  finished:")
            lines += [f"    {name} ({clock(s)})" + (f" -> {output}" if output else "")
                      for name, s, output in self.finished]
        else:
            lines.append("  finished: nothing yet")
        if self.partial:
            lines.append(f"  partial results: {self.partial}")
        return "\n".join(lines)


class EngineProgress:
    """One phase's progress from the engine's events: a tqdm bar on a terminal, short lines otherwise."""

    def __init__(self, console):
        from tqdm import tqdm

        class Bar(tqdm):
            message = ""

            @property
            def format_dict(self):   # tqdm's documented way to add a field to bar_format
                return {**super().format_dict, "message": self.message}

        self.console = console
        self.interactive = console.interactive
        fmt = "  {message}  {percentage:3.0f}%" + ("|{bar:16}|" if self.interactive else "") + \
              " {elapsed} elapsed, {remaining} left"
        # Off a terminal the bar draws nowhere: it only keeps the rate; lines are written by _line.
        self._sink = None if self.interactive else open(os.devnull, "w")
        width = shutil.get_terminal_size((100, 24)).columns   # a terminal of unknown width reads 0: tqdm draws nothing
        self.live = Bar(total=100, bar_format=fmt, file=console.stream if self.interactive else self._sink,
                        ncols=width, leave=False, mininterval=0.2)
        if self.interactive:   # the clock ticks between the engine's events: a long first step still looks alive
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        self._next_tenth = 10
        self._last_line = time.monotonic()
        self._epoch_seen = False
        self.percent = 0.0

    def _tick(self):
        while True:
            time.sleep(1.0)
            bar = self.live
            if bar is None:
                return
            bar.refresh()

    def write(self, text):
        """A line above the bar on a terminal (tqdm.write), a plain line otherwise."""
        if self.interactive and self.live is not None:
            self.live.write(text, file=self.console.stream)
        else:
            self.console.stream.write(text + "\n")
            self.console.stream.flush()

    def _line(self, text=None):
        """A status line off a terminal: percent, elapsed, time left, and what the engine said."""
        self._last_line = time.monotonic()
        d = self.live.format_dict
        shown = self.live.format_meter(**{**d, "message": text if text is not None else self.live.message})
        self.write(shown.rstrip())

    def update(self, percent, message=""):
        percent = max(self.percent, min(100.0, float(percent)))
        if message:
            self.live.message = message
        self.live.update(percent - self.percent)
        self.percent = percent
        # Off a terminal: a line per 10 %, but none for steps of a few seconds (their end says it all).
        if not self.interactive and not self._epoch_seen and percent >= self._next_tenth and percent < 100:
            self._next_tenth = 10 * (int(percent) // 10 + 1)
            if time.monotonic() - self._last_line >= QUIET_SECONDS:
                self._line()

    def epoch(self, values):
        """One line per training epoch: the engine's ``metric`` event."""
        if "epoch" not in values:
            return self.write("  " + ", ".join(f"{k} {v}" for k, v in values.items()))
        self._epoch_seen = True
        shown = ", ".join(f"{label} {values[key]:.3f}" for key, label in EPOCH_FIELDS
                          if isinstance(values.get(key), (int, float)))
        of = EPOCH_OF.search(self.live.message or "")    # the epochs in all, from the step's progress message
        text = f"epoch {values['epoch']}" + (f"/{of.group(1)}" if of else "") + (f": {shown}" if shown else "")
        if values["epoch"] == 0:
            return self.write(f"  before training: {shown}")
        if self.interactive:
            self.write(f"  {text}")
        else:
            self._line(text)

    def event(self, event):
        """``runner.run_job``'s ``on_event``: the engine's progress, log and metric events."""
        kind = event.get("event")
        if kind == "progress":
            self.update(event.get("percent", 0.0), event.get("message", ""))
        elif kind == "log":
            prefix = "warning: " if event.get("level") == "warning" else ""
            self.write(f"  {prefix}{event.get('message', '')}")
        elif kind == "metric":
            self.epoch({k: v for k, v in event.items() if k != "event"})

    def close(self):
        bar, self.live = self.live, None     # the ticker stops at None (a closed tqdm ignores refresh anyway)
        if bar is None:
            return
        bar.close()
        if self._sink:
            self._sink.close()


METRIC_TEXT = re.compile(r"^epoch=\d+(, \w+=[^,]*)*$")


def metric_from_text(text):
    """The ``metric`` event the Processing algorithms relay as 'epoch=1, train_loss=0.5, ...' (algorithms/base.py),
    or None for any other line."""
    if not METRIC_TEXT.match(text):
        return None
    values = {}
    for part in text.split(", "):
        key, _, value = part.partition("=")
        try:
            values[key] = int(value) if key == "epoch" else float(value)
        except ValueError:
            values[key] = None
    return values
