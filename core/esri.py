"""MaskForge packages that ArcGIS Pro runs: the .emd keys arcgis.learn 2.4.4 writes and reads.

Why: colleagues on ArcGIS Pro or Image Server should run a MaskForge model in
"Detect Objects Using Deep Learning" unchanged. ArcGIS Pro imports
``Framework + "." + ModelConfiguration`` (arcgis.learn's ``_maskrcnn_inferencing``)
and its built-in ``ArcGISInstanceDetector.py`` (models/_codetemplate.py:1160-1300),
which rebuilds the network with ``MaskRCNN.from_model`` (models/_maskrcnn.py:640-705):
``maskrcnn_resnet50_fpn(min_size=1.5 x chip, max_size=2 x chip)`` with
``len(Classes) + 1`` outputs, passing ``ModelParameters`` as keyword arguments
(so it may hold only arcgis.learn's own keys), and loads the ``.pth`` strictly.
Only torchvision's v1 resnet50 FPN with 3 extracted bands fits; other packages
stay MaskForge-only and say so. No ``.py`` is ever bundled: the inference
function is ArcGIS Pro's own, referenced by its ``[Functions]`` path
(models/_maskrcnn.py:745-749).
"""
ARCGIS_LEARN_VERSION = "2.4.4"     # the contract followed
INFERENCE_FUNCTION = "[Functions]System\\DeepLearning\\ArcGISLearn\\ArcGISInstanceDetector.py"
ARCGIS_MODEL_PARAMETERS = ("backbone", "backend", "pointrend")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ARCGIS_INPUT_SCALE = 1.5           # min_size = 1.5 x chip (models/_maskrcnn.py:350)


def arcgis_pro_blocker(backbone, extract_bands):
    """Why ArcGIS Pro cannot run such a package, or None."""
    if backbone != "resnet50_fpn":
        return (f"its {backbone} backbone exists only in MaskForge (ArcGIS Pro's Mask R-CNN is torchvision's "
                "resnet50 FPN v1)")
    if len(extract_bands) != 3:
        return "it reads one band replicated to three, which ArcGIS Pro does not do"
    return None


def with_arcgis_keys(emd):
    """``emd`` (MaskForge's) with the keys ArcGIS Pro reads, when it can run the package; else with the reason
    in ``ArcGISPro``. MaskForge's own network parameters move to ``MaskForgeParameters``."""
    params = dict(emd.get("ModelParameters") or {})
    blocker = arcgis_pro_blocker(params.get("backbone"), emd.get("ExtractBands") or [])
    if blocker:
        return {**emd, "ArcGISPro": f"MaskForge-only: {blocker}."}
    own = {k: v for k, v in params.items() if k not in ARCGIS_MODEL_PARAMETERS}
    norm = emd.get("Normalization") or {}
    out = {**emd,
           "Framework": "arcgis.learn.models._inferencing", "ModelConfiguration": "_maskrcnn_inferencing",
           "InferenceFunction": INFERENCE_FUNCTION, "ModelType": "InstanceDetection", "ModelName": "MaskRCNN",
           "backend": "pytorch", "ArcGISLearnVersion": ARCGIS_LEARN_VERSION, "ModelFormat": "NCHW",
           "ModelParameters": {"backbone": "resnet50", "backend": "pytorch", "pointrend": False},
           "MaskForgeParameters": own, "SupportsVariableTileSize": True, "resize_to": None,
           "IsMultispectral": False, "Classes": sorted(emd["Classes"], key=lambda c: c["Value"])}
    if norm.get("type") == "percentile_stretch":
        # Our stretch is arcgis.learn's min-max scaling (models/_inferencing/util.py:36-69) with the 2/98 %
        # values as min and max; the network keeps ImageNet's mean/std, which ArcGIS sets from the scaled stats.
        bands = list(emd["ExtractBands"])
        n = max(bands) + 1
        stats = {k: [0.0] * n for k in ("band_min_values", "band_max_values", "scaled_mean_values",
                                         "scaled_std_values")}
        mean, std = own.get("image_mean") or IMAGENET_MEAN, own.get("image_std") or IMAGENET_STD
        for i, b in enumerate(bands):
            stats["band_min_values"][b], stats["band_max_values"][b] = norm["low"][i], norm["high"][i]
            stats["scaled_mean_values"][b], stats["scaled_std_values"][b] = mean[i], std[i]
        out.update(IsImageNetNormalization=False, NormalizationStats=stats, DoNormalize=True)
    else:
        out["IsImageNetNormalization"] = True
    scale = (own.get("min_size") or emd["ImageHeight"]) / float(emd["ImageHeight"])
    out["ArcGISPro"] = ("runs in ArcGIS Pro's Detect Objects Using Deep Learning"
                        + ("." if abs(scale - ARCGIS_INPUT_SCALE) < 1e-6 else
                           f"; ArcGIS Pro feeds the network tiles resized {ARCGIS_INPUT_SCALE:g}x, this package was "
                           f"trained at {scale:g}x, so objects look {ARCGIS_INPUT_SCALE / scale:.2f}x their training "
                           "size there (train with --input-scale 1.5 for the same results in both)."))
    return out
