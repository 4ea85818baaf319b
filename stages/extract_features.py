"""DVC stage `extract_features`: features of the frozen backbone for train/val/test, computed once."""
import argparse

from ltpipe.config import load_validated_params
from ltpipe.features import extract_features

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--model", "--prepared", "--out"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    load_validated_params()
    extract_features(args.model, args.prepared, args.out)
