"""The step contracts: each step's parameters defined, defaulted and checked once.

Standard library only, so both sides import it: the engine's command line takes its options from it
(core/cli.py), the Processing algorithms generate their parameters from it (algorithms/), the dialogs
build their fields from it (ui/steps/), and a job's engine argv is built by it (``Step.to_args``).
One module per step; the rules both sides need (a package's summary, the padding, devices,
GeoPackage destinations) in their own modules.
"""
from .assess import Assess
from .compare import Compare
from .detect import Detect
from .export import Export
from .nms import Nms
from .regularize import Regularize
from .suggest import Suggest
from .train import Train

STEPS = {s.NAME: s for s in (Export, Train, Detect, Nms, Assess, Compare, Regularize, Suggest)}
