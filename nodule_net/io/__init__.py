"""Files on disk: atomic writes and write checks, the nodule dataset (HDF5) contract, checkpoints and model files."""
