"""DVC stage `retrain_classifier` (stage 2): the classifier retrained on the frozen backbone's features."""
from ltpipe.config import stage_main
from ltpipe.stage2 import retrain_classifier

if __name__ == "__main__":
    stage_main(__doc__, retrain_classifier, "--prepared", "--model", "--features", "--out", outputs=("--out",),
               check_optimizer=False)
