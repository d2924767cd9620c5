"""The life-long stream: numbered Parquet segments in, prequential predictions and memory
writes out (docs/design.md §4)."""
