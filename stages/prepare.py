"""DVC stage `prepare`: load the data set, make it long-tailed, write manifests, arrays and class counts."""
import argparse

from ltpipe.config import load_validated_params
from ltpipe.data.prepare import prepare

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    prepare(load_validated_params(), args.out)
