import sys, time, torch
sys.path.insert(0, ".")  # run from the repo root
from pathlib import Path
from pipeline.inference.ensemble import load_model
from pipeline.engine.runtime import depthwise_in_fp32
path = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/camvid/runs/camvid_lite0_e24ft/fold0/best.pt")
a, _ = load_model(path, torch.device("cpu")); depthwise_in_fp32(a); a = a.to(memory_format=torch.channels_last)
b, _ = load_model(path, torch.device("cpu")); b = b.to(memory_format=torch.channels_last)
x = torch.randn(16, 3, 384, 480).contiguous(memory_format=torch.channels_last)
res = {"dw_fp32": [], "dw_bf16": []}
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    pa, pb = a(x).float().softmax(1), b(x).float().softmax(1)
    print("max |dp|", (pa - pb).abs().max().item(), "argmax agree", (pa.argmax(1) == pb.argmax(1)).float().mean().item())
    for r in range(4):
        for name, m in (("dw_fp32", a), ("dw_bf16", b)):
            t = time.perf_counter(); m(x); res[name].append(time.perf_counter() - t)
for k, v in res.items(): print(k, [round(1000 * t) for t in v], "best", round(1000 * min(v)))
