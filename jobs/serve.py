"""Job entry point, the same as `lifelong serve`; run with --help for its options.

Also usable as `ray job submit -- python jobs/serve.py [--config PATH] [key=value ...]`, and
with Serve's own CLI: `serve run lifelong.service.launch:build_app config=jobs/configs/serve.yaml`.
"""

import sys
from pathlib import Path

try:
    from lifelong.cli import job_main
except ImportError:  # a checkout without `pip install -e .`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    from lifelong.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("serve", sys.argv[1:], prog="jobs/serve.py"))
