"""The Segment Anything model of a labeling session: which one answers, its weights, its predictor.

Why apart from core/sam.py: choosing and loading the network (the catalogue, a checkpoint file, the
architecture of each variant, the device) is done once per worker; core/sam.py is what happens per click
(windows of the raster, prompts, outlines) and works with any predictor, also a test's. The options are
core/sam.py's ``SamOptions`` (model, variant, device are read here).
"""
import pickle
from dataclasses import replace
from functools import partial

from .errors import UserError

VARIANTS = ("vit_t", "vit_b", "vit_l", "vit_h", "tiny")   # tiny: the architecture at test size (random weights only)
LIGHT = {"vit_t"}   # MobileSAM: a distilled 5M-parameter TinyViT encoder with SAM's own prompt encoder and decoder
# Which model answers when the user chose none ("auto"): on a CPU the light encoder, which gives a first
# outline in seconds where ViT-B's encode takes minutes on two cores (scripts/bench_sam.py); on a GPU ViT-B,
# whose outlines are better and whose encode is fast there.
AUTO = {"cpu": "sam_mobile", "gpu": "sam_vit_b"}
# Seconds to encode one 1024 px window on 2 idle CPU cores, told to the user before the first click in a
# new place: vit_t and vit_b measured by scripts/bench_sam.py on the Banepa scene (random weights: the cost
# is the architecture's; 2.9-3.0 s and 27 s), vit_l and vit_h scaled from vit_b by their encoders' FLOPs.
ENCODE_S_CPU = {"vit_t": 3.0, "vit_b": 27.0, "vit_l": 85.0, "vit_h": 180.0, "tiny": 0.1}


def _tiny_sam():
    """SAM's architecture (encoder, prompt encoder, decoder) at 256 px with a 2-block encoder."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    size, patch, dim = 256, 16, 64
    return Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=dim, img_size=size, mlp_ratio=4, num_heads=2,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=patch,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4,
                                      out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
                                 iou_head_hidden_dim=dim,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def _variant_of(name):
    if "mobile" in str(name).lower():
        return "vit_t"
    for variant in VARIANTS:
        if variant in str(name).lower():
            return variant
    return None


def resolve_model(model, device):
    """The catalogue id that answers for ``model`` on ``device`` ("auto": AUTO's choice) and why."""
    if model not in ("auto", ""):
        return model, "chosen"
    on_gpu = str(device).startswith(("cuda", "mps"))
    return AUTO["gpu" if on_gpu else "cpu"], ("the default on a GPU" if on_gpu else
                                               "the light model, the default on a CPU")


def _checkpoint(options, reporter):
    """(path or None, variant) of the options' model: a catalogue entry is fetched (mirror, cache, download)."""
    model = options.model
    if model == "random":
        return None, options.variant or "vit_b"
    if model.lower().endswith((".pth", ".pt")):
        variant = options.variant or _variant_of(model)
        if variant is None:
            raise UserError(f"Which SAM is '{model}'? Give --variant vit_t (MobileSAM), vit_b, vit_l or vit_h.")
        return model, variant
    from . import catalogue   # the weights issue's catalogue (kind "sam"): mirror, cache, checked download
    entry = catalogue.find(model)
    if entry.get("kind") != "sam":
        ids = ", ".join(e["id"] for e in catalogue.entries(kind="sam"))
        raise UserError(f"'{model}' is a {entry.get('kind')} model, not a Segment Anything one (those: {ids}); "
                        "or give a checkpoint file (.pth).")
    path = catalogue.fetch(entry, reporter)
    return str(path), options.variant or entry.get("variant") or _variant_of(entry["file_name"]) or "vit_b"


def _architecture(variant):
    """(SAM network with random weights, the SamPredictor class that drives it) for ``variant``."""
    if variant == "tiny":
        from segment_anything import SamPredictor
        return _tiny_sam(), SamPredictor
    if variant in LIGHT:   # MobileSAM's package (Apache-2.0): its own registry and the same predictor API
        from mobile_sam import SamPredictor, sam_model_registry
    else:
        from segment_anything import SamPredictor, sam_model_registry
    return sam_model_registry[variant](checkpoint=None), SamPredictor


def build_predictor(options, reporter=None):
    """A SamPredictor on the options' device; returns (predictor, window size in pixels).

    ``options.model`` "auto" is resolved here (``resolve_model``) and said in the log, so the user sees
    which model answers and why."""
    import torch

    from .model import select_device
    device = select_device(options.device)
    model, why = resolve_model(options.model, device)
    if model != options.model:
        options = replace(options, model=model)
        if reporter is not None:
            reporter.log(f"Segment Anything: {model} on {device} ({why}).")
    path, variant = _checkpoint(options, reporter)
    if variant not in VARIANTS:
        raise UserError(f"Unknown SAM variant '{variant}': choose one of {', '.join(VARIANTS)}.")
    if variant == "tiny" and path is not None:
        raise UserError("The 'tiny' SAM exists only with random weights (for tests): use vit_t, vit_b, vit_l or vit_h.")
    if path is None:
        torch.manual_seed(0)   # random weights (tests, timings): the same network, so the same outline, every run
    sam, predictor_class = _architecture(variant)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            raise UserError(f"'{path}' is not a {variant} Segment Anything checkpoint ({str(exc)[:300]}). "
                            "Pick the variant that matches the file (vit_t, vit_b, vit_l, vit_h).") from None
    sam.to(device).eval()
    predictor = predictor_class(sam)
    predictor.model_info = {"model": model, "variant": variant, "device": str(device),
                            "encode_s_estimate": None if device.type != "cpu" else
                            round(ENCODE_S_CPU.get(variant, 0.0) * 2 / max(torch.get_num_threads(), 1), 1)}
    if reporter is not None:
        estimate = predictor.model_info["encode_s_estimate"]
        reporter.progress(0, f"{model} ready on {device}" + (f"; a click in a new place encodes the view in "
                                                              f"about {estimate:g} s" if estimate else ""))
    return predictor, int(sam.image_encoder.img_size)
