"""arrays32: one float32 array of 32 MiB each way per SuperNode and round."""
