#!/bin/bash
# Run from the repository root after tune3-catalogue2-chain.sh (runs/: the chain's runs folder, or a link to it): no
# training, both tables from its cache (--report-only), each into a copy of it. (1) rdpo at the file's flip rate 0.1
# (the file named as a loss file: the same code, so the same cached fine-tunes, as the first catalogue run's `rdpo`)
# against rdpo at the task's 0.25, paired, one Holm family with DPO. (2) All fourteen losses measured with three
# tuning seeds in one Holm family per beta (the strongest other then ranges over all the references; the file's rdpo
# is not one).
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
date -u +%T; uptime
for d in tune3_catalogue_eps tune3_catalogue_all; do
  mkdir -p runs/$d && cp -n runs/tune3_catalogue2/results.sqlite runs/$d/
done
nice -n 5 discopop evaluate discopop/proposals/rdpo.py rdpo --report-only --betas 0.1,0.5,2.5 --tune-seeds 3 \
  --seeds 5 -o runs/tune3_catalogue_eps "$GRID" training.oracle_timeout=300 wandb.mode=disabled
nice -n 5 discopop evaluate hinge bco_pair exo_pair nca_pair sppo_hard discopop/proposals/rdpo.py aot apo_zero \
  apo_down lrml simpo orpo rdpo --report-only --betas 0.1,0.5,2.5 --tune-seeds 3 --seeds 5 \
  -o runs/tune3_catalogue_all "$GRID" training.oracle_timeout=300 wandb.mode=disabled
date -u +%T; uptime
