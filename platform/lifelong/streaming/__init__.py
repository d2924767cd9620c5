"""The life-long stream: numbered Parquet segments in, prequential predictions and memory
writes out (DESIGN.md section 3)."""
