import sys
from pathlib import Path

# Test helpers (e.g. the brute-force memory reference) import by module name.
sys.path.insert(0, str(Path(__file__).parent / "unit"))
