#!/bin/bash
# Run from the repository root, after own-beta-chain.sh (its fine-tunes copied into the output: every run-seed
# search run and fresh-seed run it made is read, not re-trained): five references at beta 0.1, 0.5 and 2.5, each
# rate (and each loss's own beta) now chosen on the mean of 3 tuning seeds (0, 1, 2) instead of seed 0 alone.
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
run() { echo "### $(date -u +%T) $*"; uptime; nice -n 5 discopop evaluate "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; uptime; }
mkdir -p runs/tune3 && cp -n runs/ownbeta/results.sqlite runs/tune3/
run ipo rpo sigmoid_norm ipo_norm --betas 0.1,0.5,2.5 --tune-seeds 3 --seeds 5 -o runs/tune3
