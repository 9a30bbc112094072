"""The discovery loop and what it decides with: the evaluation cascade, the seed race, the fresh-seed confirmation
and the behaviour map.
"""
