#!/bin/bash
# Run from the repository root: `--constants` at beta 0.1 (TRL's default), after constants-chain.sh did beta 0.5.
# Each reference's declared constants moved x3 down and up (SimPO's GAMMA, RPO's ALPHA, AlphaPO's ALPHA and GAMMA),
# each variant tuned on the grid and confirmed on the same 5 fresh seeds as its default, and judged against DPO, the
# strongest other reference and its own defaults. Grid: the extended 9-point one of beta0.1-chain.sh (at beta 0.1
# the chosen rates sit low: 1.25e-6 to 4e-5). The task cache is the machine's default build (addition-64a222bdd173).
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
run() { echo "### $(date -u +%T) $*"; uptime; nice -n 5 discopop evaluate "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; uptime; }
run simpo rpo alphapo --constants --betas 0.1 --seeds 5 -o runs/c01
