"""Broken code."""

def hostile(:
    return 1
