"""Helpers shared by the stages: params, atomic writes, rejects, process pool, probes, decoding."""
