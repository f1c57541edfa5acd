"""`nodule-net predict`: the flags into a nodule to score, the fold models, the crop they were trained on
and their training data (the dataset and its splits, which say which fold held a training nodule out)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nodule_net.config import load_params
from nodule_net.evaluation.inference import load_fold_models
from nodule_net.evaluation.predict import (
    DatasetNodule,
    SeriesNodule,
    check_params_agree,
    format_result,
    predict,
    training_crop,
)
from nodule_net.runtime.device import resolve_device


def nodule_source(args: argparse.Namespace) -> DatasetNodule | SeriesNodule:
    """The nodule the flags name; raises ``ValueError`` for a combination of flags that names none."""
    location = [args.centre_mm is not None, args.centre_voxel is not None, args.box is not None]
    if args.nodule_id is not None:
        if args.series is not None or any(location):
            raise ValueError("--nodule-id takes a nodule from --dataset; give it without a series or a location.")
    else:
        if args.series is None:
            raise ValueError("give a DICOM series folder and a location, or --dataset and --nodule-id.")
        if sum(location) != 1:
            raise ValueError(
                "give exactly one location: --centre-mm X Y Z, --centre-voxel I J K, or --box I0 I1 J0 J1 K0 K1."
            )
        if (args.centre_mm is not None or args.centre_voxel is not None) == (args.diameter_mm is None):
            raise ValueError("--diameter-mm goes with --centre-mm or --centre-voxel (and only with them).")
    if args.slices is not None and args.box is None:
        raise ValueError("--slices picks slices of a --box; give --box too.")
    if args.nodule_id is not None:
        return DatasetNodule(dataset=args.dataset, nodule_id=args.nodule_id)
    assert args.series is not None  # checked above
    return SeriesNodule(
        series=args.series,
        box=None if args.box is None else tuple(args.box),
        centre_mm=None if args.centre_mm is None else tuple(args.centre_mm),
        centre_voxel=None if args.centre_voxel is None else tuple(args.centre_voxel),
        diameter_mm=args.diameter_mm,
        slices=args.slices,
    )


def run(args: argparse.Namespace) -> None:
    """Check which nodule was named, score it with every fold model, print a report or JSON."""
    source = nodule_source(args)
    device = resolve_device(args.device, what="--device")
    models, record = load_fold_models(args.models, device)  # first: no models is the first thing to say
    crop = training_crop(record, args.models)
    params = Path(args.params)
    if params.exists():  # only to say where it differs: predict crops as the models were trained
        check_params_agree(crop, load_params(params).extract, params)
    result = predict(
        source,
        models,
        crop,
        device,
        args.models,
        crop_recorded=record is not None,
        dataset=args.dataset,
        splits=args.splits,
    )
    print(json.dumps(result, indent=2) if args.json else format_result(result))
