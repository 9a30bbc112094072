#!/bin/bash
# step 1 (beta 0.5, extended grid), then beta 2.5 in two stages; each command twice (a second pass reruns only
# machinery failures, which are never cached).
cd /work/wt-v2grid
export DISCOPOP_CACHE_DIR=/tmp/v2grid/cache
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
E=".venv/bin/discopop evaluate"
run() { echo "### $(date -u +%T) $*"; nice -n 5 $E "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; }
for pass in 1 2; do run dpo simpo orpo sigmoid_norm alphapo --betas 0.5 --seeds 5 -o /tmp/v2grid/b05; done
for pass in 1 2; do run dpo simpo orpo sigmoid_norm --betas 2.5 --seeds 3 -o /tmp/v2grid/b25; done
for pass in 1 2; do run dpo simpo orpo sigmoid_norm alphapo ipo ipo_norm rpo --betas 2.5 --seeds 3 -o /tmp/v2grid/b25; done
