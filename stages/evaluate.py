"""DVC stage `evaluate`: test-set metrics (overall and many/medium/few-shot), per-class table, confusion matrix."""
import argparse

from ltpipe.config import load_validated_params
from ltpipe.evaluate import evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--prepared", "--stage2", "--features", "--out"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    evaluate(load_validated_params(), args.prepared, args.stage2, args.out, args.features)
