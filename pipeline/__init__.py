"""DVC stage scripts, one per stage. dvc.yaml runs them as ``python -m pipeline.<stage>`` from the
repo root, so the checkout's own ``nodule_net`` comes first on ``sys.path``."""
