#!/bin/bash
# side by side: inference with the depthwise layers in fp32 (old) and in bf16 (new), fold models of the 48:32 run
cd "$(dirname "$0")/../../.."  # the repo root
PY=${PY:-python}
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184
run() { /usr/bin/time -f "$1 wall %e s" $PY -m pipeline infer data=camvid exp=camvid_lite0_e24ft name=$1 "infer.experiments=[camvid_lite0_e24ft]" runtime.progress=false 2>&1 | grep -v Warning; }
run dwnew
git stash -q
run dwold
git stash pop -q
for n in dwnew dwold; do $PY -m pipeline tune data=camvid exp=camvid_lite0_e24ft name=$n "infer.experiments=[camvid_lite0_e24ft]" runtime.progress=false 2>&1 | grep "tune:"; done
