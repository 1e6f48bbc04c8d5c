"""Pure decisions of the reconciler: what the world looks like, what to change, what to report."""
