"""Time Segment Anything in the labeling worker: encode per window, prompt latency.

    .venv/bin/python scripts/bench_sam.py [--variant vit_t|vit_b|...] [--device cpu] [--raster PATH] [--prompts 10]

With no --variant it measures the model the engine picks for the device ("auto": MobileSAM, vit_t, on a
CPU; ViT-B on a GPU). first_outline_s is what a user waits for the first click in a new place (an encode
and a prompt); prompt_median_s each next click there.

Random weights of the real architecture (the cost is the architecture's, not the
weights'), through the real SamSession on a real raster (default: the OSBS sample
image, else a generated one). Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="", help="default: the one 'auto' picks for the device")
    p.add_argument("--device", default="cpu")
    p.add_argument("--raster", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "osbs-trees",
                                                    "image.tif"))
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--windows", type=int, default=2)
    a = p.parse_args()
    import rasterio
    import torch

    from core import catalogue
    from core.sam import SamOptions, SamSession
    from core.sam_model import build_predictor, resolve_model
    if not a.variant:
        a.variant = catalogue.find(resolve_model("auto", a.device)[0])["variant"]
    t0 = time.perf_counter()
    predictor, size = build_predictor(SamOptions(model="random", variant=a.variant, device=a.device))
    build_s = time.perf_counter() - t0
    session = SamSession(predictor, size, SamOptions())
    with rasterio.open(a.raster) as src:
        left, bottom, right, top = src.bounds
        res = abs(src.transform.a)
    encodes, prompts, firsts = [], [], []
    for w in range(a.windows):
        # windows a full window apart, so each is a fresh encode
        x = left + (size / 2 + w * size * 0.9) * res
        y = top - size / 2 * res
        x = min(x, right - res)
        r = session.prompt(a.raster, None, points=[[x, y]])
        encodes.append(r["encode_s"])
        firsts.append(round(r["encode_s"] + r["predict_s"], 3))
        for i in range(a.prompts):
            r = session.prompt(a.raster, None, points=[[x + (i % 5) * res * 3, y - (i // 5) * res * 3]])
            assert not r["encoded"]
            prompts.append(r["predict_s"])
        b = session.prompt(a.raster, None, box=[x - 20 * res, y - 20 * res, x + 20 * res, y + 20 * res])
        prompts.append(b["predict_s"])
    prompts.sort()
    print(json.dumps({"variant": a.variant, "device": a.device, "window_px": size, "torch_threads": torch.get_num_threads(),
                      "build_s": round(build_s, 2), "encode_s": encodes, "first_outline_s": firsts,
                      "load": round(os.getloadavg()[0], 1),
                      "prompt_median_s": prompts[len(prompts) // 2], "prompt_max_s": prompts[-1],
                      "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None}))


if __name__ == "__main__":
    main()
