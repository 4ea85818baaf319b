"""DVC stage `prepare`: load the data set, make it long-tailed, write manifests, arrays and class counts."""
from ltpipe.config import stage_main
from ltpipe.data.prepare import prepare

if __name__ == "__main__":
    stage_main(__doc__, prepare, "--out", outputs=("--out",))
