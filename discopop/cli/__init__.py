"""Every command: discover and discopop check|leaderboard|export|report|evaluate|import-run|check-gpu; thin
wrappers that parse, call and print one line on error.
"""
