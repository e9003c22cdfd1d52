"""The commands, grouped by concern: ``stages`` (each stage of the method on its own), ``management`` (the
pipeline as tracked jobs), ``inspection`` (read-only views), ``evaluation`` (FID gate, report, comparison)."""
