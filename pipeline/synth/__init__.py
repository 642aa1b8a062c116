"""The embedded synthetic corpus in the real VoxCeleb1 and CelebA layouts (docs/synthetic-corpus.md)."""
