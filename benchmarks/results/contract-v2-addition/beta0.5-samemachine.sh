#!/bin/bash
# The 8 references at beta 0.5 on this machine, on the beta 0.1 table's grid and seeds: a copy of the constants run's
# output (its fine-tunes of dpo, simpo, rpo, alphapo are re-used; the cache key does not hold the grid).
export DISCOPOP_CACHE_DIR=$PWD/runs/cache-beta01
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
echo "### $(date -u +%T)"; uptime
nice -n 5 .venv/bin/discopop evaluate dpo simpo orpo sigmoid_norm alphapo rpo ipo_norm ipo --betas 0.5 --seeds 5 \
    -o runs/b05 "$GRID" training.oracle_timeout=300
echo "### rc=$? $(date -u +%T)"; uptime
