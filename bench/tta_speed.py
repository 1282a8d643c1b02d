"""TTA throughput: segpipe's batched views vs ttach's SegmentationTTAWrapper (one forward pass
per transform), same model, same transforms, same images.

    python bench/tta_speed.py [--arch Unet --encoder resnet34 --size 512 --batch 8 --tta d4]
"""
from __future__ import annotations

import argparse

import torch
import ttach
from common import save, timed

from pipeline.config import ModelConfig
from pipeline.models import build_model
from pipeline.engine.runtime import amp_dtype
from pipeline.inference.tta import build_tta, predict_probs


class Softmaxed(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).float().softmax(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet34")
    cuda = torch.cuda.is_available()
    p.add_argument("--size", type=int, default=512 if cuda else 256)
    p.add_argument("--batch", type=int, default=8 if cuda else 2)
    p.add_argument("--batches", type=int, default=10 if cuda else 3)
    p.add_argument("--tta", nargs="+", default=["hflip", "d4"])
    a = p.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    model = build_model(ModelConfig("b", a.arch, a.encoder), 12).to(device).eval()
    dtype = amp_dtype("auto", device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(a.batch, 3, a.size, a.size, device=device)
    rows = []
    for name in a.tta:
        tta = build_tta([name])
        wrapper = ttach.SegmentationTTAWrapper(Softmaxed(model), tta, merge_mode="mean")

        def ours():
            with torch.no_grad():
                for _ in range(a.batches):
                    predict_probs(model, x, tta, dtype)
            if cuda:
                torch.cuda.synchronize()

        def theirs():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for _ in range(a.batches):
                    wrapper(x)
            if cuda:
                torch.cuda.synchronize()

        ours(), theirs()  # warm-up (cudnn autotuning for both batch shapes)
        n = a.batch * a.batches
        t_ours, t_theirs = timed(ours), timed(theirs)
        with torch.no_grad():
            diff = (predict_probs(model, x, tta, None) - ttach.SegmentationTTAWrapper(Softmaxed(model), tta)(x)).abs().max().item()
        rows.append({"tta": name, "views": len(tta), "segpipe_img_per_s": round(n / t_ours, 1),
                     "ttach_img_per_s": round(n / t_theirs, 1), "speedup": round(t_theirs / t_ours, 2),
                     "max_abs_diff_fp32": diff})
    save("tta_speed", {"arch": a.arch, "encoder": a.encoder, "size": a.size, "batch": a.batch,
                       "amp": str(dtype), "results": rows})


if __name__ == "__main__":
    main()
