"""DVC stage `evaluate`: test-set metrics (overall and many/medium/few-shot), per-class table, confusion matrix."""
from ltpipe.config import stage_main
from ltpipe.evaluate import evaluate

if __name__ == "__main__":
    stage_main(__doc__, evaluate, "--prepared", "--stage2", "--out", "--features", outputs=("--out",),
               check_optimizer=False)
