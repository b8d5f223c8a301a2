"""``sipha demo``: the whole HA story on one machine (see run.py for the scenarios)."""
