"""The machine: training devices (with a per-GPU lock), worker pools, and the package's own import graph."""
