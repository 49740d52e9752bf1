"""The contract and its files: result types, the run folder's layout, atomic writes, pair states."""
