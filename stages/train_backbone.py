"""DVC stage `train_backbone` (stage 1): representation learning, resumable from its checkpoint."""
import argparse

from ltpipe.config import load_validated_params
from ltpipe.train.stage1 import train_backbone

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--prepared", "--out", "--live", "--checkpoint"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    train_backbone(load_validated_params(), args.prepared, args.out, args.live, args.checkpoint)
