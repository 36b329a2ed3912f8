"""Pure array operations: Hough voting and decoding."""
