"""DVC stage `train_backbone` (stage 1): representation learning, resumable from its checkpoint."""
from ltpipe.config import stage_main
from ltpipe.train.stage1 import train_backbone

if __name__ == "__main__":
    stage_main(__doc__, train_backbone, "--prepared", "--out", "--live", outputs=("--out", "--live"),
               distributed_module="stages.train_backbone")
