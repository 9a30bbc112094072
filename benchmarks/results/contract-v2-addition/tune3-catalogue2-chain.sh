#!/bin/bash
# Run from the directory holding runs/: the remaining TRL catalogue references with 3 tuning seeds, at beta 0.1, 0.5
# and 2.5, each rate (and each loss's own beta) chosen on the mean of 3 tuning seeds; rdpo again, now at the task's
# flip rate 0.25 (rdpo_eps_0_25; aot likewise at 0.25: aot_eps_0_25). DPO's fine-tunes (and the first six's) read
# from the earlier run (tune3-catalogue-chain.sh), its cache copied into the output.
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
echo "### $(date -u +%T) start"; uptime
mkdir -p runs/tune3_catalogue2 && cp -n runs/tune3_catalogue/results.sqlite runs/tune3_catalogue2/
nice -n 5 discopop evaluate aot apo_zero apo_down lrml simpo orpo rdpo \
  --betas 0.1,0.5,2.5 --tune-seeds 3 --seeds 5 -o runs/tune3_catalogue2 "$GRID" training.oracle_timeout=300 \
  wandb.mode=disabled
echo "### rc=$? $(date -u +%T)"; uptime
