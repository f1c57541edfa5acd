"""DVC stage `params`: check all of params.yaml against the schema (nodule_net/config.py).

Every other stage checks the whole file when it runs, but `dvc exp run` runs only the stages
whose own params changed: an experiment that adds an unknown key (`-S +trian.epochs=1`, a
typo) changes none of them, and DVC would record it as a success. This stage's params are
the whole file (every key, new ones included), so any change to it runs this check, which
fails with the schema's one line. It writes nothing.
"""

import argparse

from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import load_params


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    load_params(args.params)
    print(f"{args.params}: ok")


if __name__ == "__main__":
    main()
