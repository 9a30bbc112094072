#!/bin/bash
# Run from the repository root with its venv: step 1, the contract-v2 references at beta 0.1 on the extended grid
# (5 fresh seeds), in two stages sharing one output directory (stage 2 re-uses stage 1's fine-tunes): five losses
# of distinct behaviour at beta 0.5 first, then the three that were near-copies there.
# The task cache (runs/cache-beta01) holds a copy of this machine's earlier build of the default addition task
# (same build hash, addition-64a222bdd173, and SFT stage): its in-process SFT ran at 3 s/step under load.
export DISCOPOP_CACHE_DIR=$PWD/runs/cache-beta01
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
E=".venv/bin/discopop evaluate"
run() { echo "### $(date -u +%T) $*"; uptime; nice -n 5 $E "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; uptime; }
run dpo simpo orpo rpo ipo --betas 0.1 --seeds 5 -o runs/b01
cp runs/b01/results.csv runs/b01/stage1-results.csv
run dpo simpo orpo rpo ipo sigmoid_norm alphapo ipo_norm --betas 0.1 --seeds 5 -o runs/b01
