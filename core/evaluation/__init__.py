"""Evaluation: FID/KID with its feature extractors, held-out losses, the report."""
