#!/bin/bash
# Run from the repository root, after constants-beta0.1-chain.sh (its fine-tunes copied into the output, so the
# beta 0.1 cells of DPO, SimPO, RPO and AlphaPO and their constant variants are read, not re-trained): the
# contract-v2 references and their constant variants at beta 0.1, 0.5 and 2.5 on the extended 9-point grid,
# 5 fresh seeds; with three betas the command also judges each loss at its own beta (own_beta.csv).
GRID='training.lr_grid=[6.25e-7,1.25e-6,2.5e-6,5e-6,1e-5,2e-5,4e-5,8e-5,1.6e-4]'
run() { echo "### $(date -u +%T) $*"; uptime; nice -n 5 discopop evaluate "$@" "$GRID" training.oracle_timeout=300; echo "### rc=$? $(date -u +%T)"; uptime; }
mkdir -p runs/ownbeta && cp -n runs/c01/results.sqlite runs/ownbeta/
run simpo rpo alphapo --constants orpo ipo sigmoid_norm ipo_norm --betas 0.1,0.5,2.5 --seeds 5 -o runs/ownbeta
