"""``make bench``: the stack beside its in-process limit and its peers, on one model and machine."""
