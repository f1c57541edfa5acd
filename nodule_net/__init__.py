"""nodule-net: attention-enhanced cross-task network for LIDC-IDRI nodule attributes (Fu et al.)."""

__version__ = "0.1.0"
