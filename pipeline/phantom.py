"""DVC stage `phantom`: write the LIDC-like phantom DICOM tree (see nodule_net/data/phantom.py)."""

import argparse

from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import load_params
from nodule_net.data.lidc import resolve_patients, scans_for_patients
from nodule_net.data.phantom import IMAGE_SIZE, build_phantom
from nodule_net.io.files import check_writable


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="root of the phantom DICOM tree")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    p = params.phantom
    patients = resolve_patients(p.patients)
    # Checked before rendering: uncompressed 16-bit slices; without all_slices a scan gets its
    # nodules' slices ± margin (LIDC: ~17 nodule slices per scan on average, 40 allowed).
    scans = scans_for_patients(patients, "all")
    planned = sum(len(s.slice_zvals) if p.all_slices else min(len(s.slice_zvals), 40) for s in scans)
    check_writable(args.out, planned * IMAGE_SIZE**2 * 2)
    manifest = build_phantom(
        args.out, patients, seed=params.seed, margin=p.margin_slices, all_slices=p.all_slices, workers=p.workers
    )
    slices = sum(s["slices"] for s in manifest["scans"])
    print(f"phantom: {len(patients)} patients, {len(manifest['scans'])} scans, {slices} slices -> {args.out}")


if __name__ == "__main__":
    main()
