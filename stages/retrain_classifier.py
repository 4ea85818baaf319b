"""DVC stage `retrain_classifier` (stage 2): the classifier retrained on the frozen backbone's features."""
import argparse

from ltpipe.config import load_validated_params
from ltpipe.stage2 import retrain_classifier

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--prepared", "--model", "--features", "--out"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    retrain_classifier(load_validated_params(), args.prepared, args.model, args.features, args.out)
