"""Helpers of the tuples stage: inputs (manifest + feature-store ids), sampling, checks, 1:k'
truncation, and the per-split output layout."""
