#!/bin/bash
# after stage A (pid given) finishes: its retry pass, the full 8-loss table at beta 0.5 (rpo ipo_norm ipo on the
# extended grid too), then beta 2.5 stage B; each command twice (the second pass reruns only machinery failures).
cd /work/wt-v2grid
export DISCOPOP_CACHE_DIR=/tmp/v2grid/cache
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
E=".venv/bin/discopop evaluate"
run() { echo "### $(date -u +%T) $*"; nice -n 5 $E "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; }
while kill -0 "$1" 2>/dev/null; do sleep 5; done
echo "### $(date -u +%T) stage A pass 1 ended"
run dpo simpo orpo sigmoid_norm --betas 2.5 --seeds 3 -o /tmp/v2grid/b25
for pass in 1 2; do run dpo simpo orpo rpo sigmoid_norm ipo_norm ipo alphapo --betas 0.5 --seeds 5 -o /tmp/v2grid/b05; done
for pass in 1 2; do run dpo simpo orpo sigmoid_norm alphapo ipo ipo_norm rpo --betas 2.5 --seeds 3 -o /tmp/v2grid/b25; done
