"""Stage-1 representation learning and the optimisation pieces it shares with stage 2."""
