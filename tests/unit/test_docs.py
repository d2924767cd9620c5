"""The project's documents point only at what the repository holds."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs/design.md"


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    out = []
    for name in names:
        path = ROOT / name
        if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".json", ".toml",
                                              ".txt", ""} and path.stat().st_size < 2_000_000:
            out.append(path)
    return out


def test_every_design_document_named_exists():
    pattern = re.compile(r"[\w./-]*design[\w.-]*\.md", re.IGNORECASE)
    missing = {f"{path.relative_to(ROOT)}: {ref}"
               for path in tracked_text_files()
               for ref in pattern.findall(path.read_text(errors="replace"))
               if not (ROOT / ref).is_file() and not (path.parent / ref).is_file()}
    assert missing == set()


def test_every_section_cited_exists_in_the_design_document():
    anchors = set(re.findall(r'<a id="(s[\d-]+)"></a>', DESIGN.read_text()))
    assert {"s1", "s2", "s3", "s4"} <= anchors
    cited = re.compile(r"docs/design\.md\s*§(\d+(?:\.\d+)?)")
    missing = {f"{path.relative_to(ROOT)}: §{number}"
               for path in tracked_text_files()
               for number in cited.findall(path.read_text(errors="replace"))
               if "s" + number.replace(".", "-") not in anchors}
    assert missing == set()
