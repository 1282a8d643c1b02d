#!/bin/bash
# make camvid's stages after training, with infer.probs_dtype=uint8, on the seed-2 run's trained models (a copy)
cd /work/main
P=/work/fresh27/.venv/bin/python
A="data=camvid exp=camvid_lite0_e24ft_seed2 outputs=/tmp/u8 submissions=/tmp/u8/subs infer.probs_dtype=uint8"
for stage in train-all infer tune submit; do
  s=$(date +%s.%N)
  $P -m pipeline $stage $A || { echo "$stage failed"; exit 1; }
  echo "STAGE $stage $(echo "$(date +%s.%N) - $s" | bc) s"
done
du -sb /tmp/u8/camvid/preds/camvid_lite0_e24ft_seed2 /tmp/u8/camvid/pseudo/camvid_lite0_e24ft_seed2
