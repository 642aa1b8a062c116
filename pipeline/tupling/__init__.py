"""Helpers of the tuples stage: manifest inputs, seeded sampling, output validation."""
