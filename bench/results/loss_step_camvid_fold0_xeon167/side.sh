#!/bin/bash
# real CamVid fold-0 epochs, old losses (fresh24 at 2aa27cd) vs new (main working tree), interleaved
set -x
cd /work/main && /work/fresh24/.venv/bin/python -m pipeline.cli folds data=camvid > /tmp/exp/folds.log 2>&1
for r in 1 2; do
  cd /work/fresh24 && /usr/bin/time -f "old r$r %e s" .venv/bin/python -m pipeline.cli train data=camvid exp=camvid_lite0_e24ft fold=0 name=losscheck_old_r$r train.epochs=2 train.val_every=100 > /tmp/exp/old_r$r.log 2>&1
  cd /work/main && /usr/bin/time -f "new r$r %e s" /work/fresh24/.venv/bin/python -m pipeline.cli train data=camvid exp=camvid_lite0_e24ft fold=0 name=losscheck_new_r$r train.epochs=2 train.val_every=100 > /tmp/exp/new_r$r.log 2>&1
done
