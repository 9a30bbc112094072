#!/bin/bash
# Run from the repository root with its venv: step 1, the 8 contract-v2 references at beta 0.1 on the extended grid
# (5 fresh seeds); each command twice (the second pass reruns only machinery failures, which are never cached).
# The task is built once into runs/cache-beta01 (the first command builds it).
export DISCOPOP_CACHE_DIR=$PWD/runs/cache-beta01
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
E=".venv/bin/discopop evaluate"
run() { echo "### $(date -u +%T) $*"; uptime; nice -n 5 $E "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; uptime; }
for pass in 1 2; do run dpo simpo orpo sigmoid_norm alphapo rpo ipo_norm ipo --betas 0.1 --seeds 5 -o runs/b01; done
