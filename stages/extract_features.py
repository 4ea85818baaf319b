"""DVC stage `extract_features`: features of the frozen backbone for train/val/test, computed once."""
from ltpipe.config import stage_main
from ltpipe.features import extract_features

if __name__ == "__main__":
    stage_main(__doc__, extract_features, "--model", "--prepared", "--out", outputs=("--out",), check_optimizer=False)
