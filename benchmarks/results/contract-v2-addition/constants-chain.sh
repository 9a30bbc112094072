#!/bin/bash
# Run from the repository root with its venv, after beta0.1-chain.sh (same task cache): step 2, `--constants` at
# beta 0.5: each reference's declared constants moved x3 down and up, each variant tuned on the grid and confirmed
# on the same 5 fresh seeds as its default, and judged against it. Stages, each re-using the previous one's
# fine-tunes (same output directory): SimPO's GAMMA, then RPO's ALPHA, then AlphaPO's ALPHA and GAMMA.
# Grid: the extended one without its two ends (never chosen at beta 0.5 by these losses; an edge pick is marked).
export DISCOPOP_CACHE_DIR=$PWD/runs/cache-beta01
GRID='training.lr_grid=[1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5]'
E=".venv/bin/discopop evaluate"
run() { echo "### $(date -u +%T) $*"; uptime; nice -n 5 $E "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; uptime; }
run simpo --constants --betas 0.5 --seeds 5 -o runs/c05
cp runs/c05/results.csv runs/c05/stage1-results.csv
run simpo rpo --constants --betas 0.5 --seeds 5 -o runs/c05
cp runs/c05/results.csv runs/c05/stage2-results.csv
run simpo rpo alphapo --constants --betas 0.5 --seeds 5 -o runs/c05
