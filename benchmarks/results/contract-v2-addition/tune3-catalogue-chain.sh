#!/bin/bash
# Run from the repository root: the first six of TRL's catalogue references not yet measured with 3 tuning seeds, at beta 0.1, 0.5
# and 2.5, each rate (and each loss's own beta) chosen on the mean of 3 tuning seeds; DPO's fine-tunes read from
# the earlier five-loss run (tune-seeds-chain.sh), copied into the output.
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
echo "### $(date -u +%T) start"; uptime
mkdir -p runs/tune3_catalogue && cp -n runs/tune3/results.sqlite runs/tune3_catalogue/
nice -n 5 discopop evaluate hinge rdpo bco_pair exo_pair nca_pair sppo_hard \
  --betas 0.1,0.5,2.5 --tune-seeds 3 --seeds 5 -o runs/tune3_catalogue "$GRID" training.oracle_timeout=300 \
  wandb.mode=disabled
echo "### rc=$? $(date -u +%T)"; uptime
