"""arcgis.learn 2.4.4's reading of a Mask R-CNN package, rebuilt with torchvision for the tests
(the wheel's arcgis/learn/... files and lines are cited; nothing of Esri's is imported or shipped)."""
import numpy as np
import torch
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

# Keys ArcGIS Pro's ArcGISInstanceDetector (models/_codetemplate.py:1160-1300), its child
# _maskrcnn_inferencing.ChildInstanceDetector (models/_inferencing/_maskrcnn_inferencing.py:170-300) and
# MaskRCNN.from_model (models/_maskrcnn.py:640-705, _utils/common.py:423-439) read.
REQUIRED_KEYS = ("Framework", "ModelConfiguration", "InferenceFunction", "ModelType", "ModelFile", "ModelName",
                 "ModelParameters", "ImageHeight", "ImageWidth", "ExtractBands", "Classes",
                 "IsImageNetNormalization", "IsMultispectral", "resize_to", "ArcGISLearnVersion", "ImageSpaceUsed")
MODEL_PARAMETERS = {"backbone", "backend", "pointrend"}   # passed to MaskRCNN(...) as keyword arguments


def from_model_network(emd, chip=None):
    """The network from_model builds for backbone resnet50 (models/_maskrcnn.py:340-353 and 467-485):
    maskrcnn_resnet50_fpn(weights=None, min_size=1.5 x chip, max_size=2 x chip), predictors for
    len(Classes) + 1 outputs, the scaled mean/std for non-8-bit data (models/_maskrcnn.py:324-326, 473-475)."""
    chip = chip or emd["ImageHeight"]
    c = len(emd["Classes"]) + 1
    net = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                              min_size=1.5 * chip, max_size=2 * chip)
    net.roi_heads.box_predictor = FastRCNNPredictor(net.roi_heads.box_predictor.cls_score.in_features, c)
    net.roi_heads.mask_predictor = MaskRCNNPredictor(net.roi_heads.mask_predictor.conv5_mask.in_channels, 256, c)
    if not emd.get("IsImageNetNormalization", True):
        bands = emd["ExtractBands"]
        stats = emd["NormalizationStats"]
        net.transform.image_mean = [stats["scaled_mean_values"][b] for b in bands]
        net.transform.image_std = [stats["scaled_std_values"][b] for b in bands]
    return net


def load_like_fastai(net, blob):
    """fastai's Learner.load: state['model'] when saved with the optimizer, strict load."""
    state = blob["model"] if "model" in blob and isinstance(blob["model"], dict) else blob
    net.load_state_dict(state, strict=True)
    return net


def network_input(emd, pixels):
    """What ArcGIS Pro feeds the network for raster pixels (bands, H, W) of ExtractBands: /255, or
    scale_batch's min-max with NormalizationStats (models/_inferencing/_maskrcnn_inferencing.py:311-314,
    models/_inferencing/util.py:36-69)."""
    x = pixels.astype(np.float32)
    stats = emd.get("NormalizationStats")
    if stats:
        bands = emd["ExtractBands"]
        low = np.array(stats["band_min_values"])[bands].reshape(-1, 1, 1)
        high = np.array(stats["band_max_values"])[bands].reshape(-1, 1, 1)
        x = (x - low) / (high - low)
    else:
        x = x / 255
    return torch.tensor(x, dtype=torch.float32)
