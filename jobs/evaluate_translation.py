"""Job entry point, the same as `lifelong evaluate translation`; run with --help for its options.

Also usable as `ray job submit -- python jobs/evaluate_translation.py [--config PATH] [key=value ...]`.
"""

import sys
from pathlib import Path

try:
    from lifelong.cli import job_main
except ImportError:  # a checkout without `pip install -e .`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    from lifelong.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("evaluate_translation", sys.argv[1:], prog="jobs/evaluate_translation.py"))
