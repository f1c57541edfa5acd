"""DVC stage `phantom`: write the LIDC-like phantom DICOM tree (see nodule_net/phantom.py)."""

import argparse

from nodule_net.lidc import resolve_patients
from nodule_net.params import load_params, user_errors_exit
from nodule_net.phantom import build_phantom


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="root of the phantom DICOM tree")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    p = params["phantom"]
    patients = resolve_patients(p["patients"])
    manifest = build_phantom(args.out, patients, seed=params["seed"], margin=p["margin_slices"],
                             all_slices=p["all_slices"], workers=p["workers"])
    slices = sum(s["slices"] for s in manifest["scans"])
    print(f"phantom: {len(patients)} patients, {len(manifest['scans'])} scans, {slices} slices -> {args.out}")


if __name__ == "__main__":
    main()
