"""The network (paper §2), its loss (eq. 8) and the per-attribute reference form."""
