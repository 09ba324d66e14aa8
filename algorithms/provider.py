"""The "MaskForge" Processing provider: one algorithm per workflow step."""
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .compare_detections import CompareDetectionsAlgorithm
from .compute_accuracy import ComputeAccuracyAlgorithm
from .detect_objects import DetectObjectsAlgorithm
from .export_training_data import ExportTrainingDataAlgorithm
from .nms import NonMaximumSuppressionAlgorithm
from .regularize import RegularizeAlgorithm
from .suggest import SuggestAlgorithm
from .train import TrainAlgorithm

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")


class MaskForgeProvider(QgsProcessingProvider):

    def id(self):
        return "maskforge"

    def name(self):
        return "MaskForge"

    def longName(self):
        return "MaskForge: fine-tune Mask R-CNN and detect objects"

    def icon(self):
        return QIcon(ICON)

    def loadAlgorithms(self):
        for alg in (ExportTrainingDataAlgorithm(), TrainAlgorithm(), DetectObjectsAlgorithm(),
                    NonMaximumSuppressionAlgorithm(), RegularizeAlgorithm(), ComputeAccuracyAlgorithm(),
                    CompareDetectionsAlgorithm(), SuggestAlgorithm()):
            self.addAlgorithm(alg)
