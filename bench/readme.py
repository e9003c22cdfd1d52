"""Copy bench/results/NAME.md into bench/README.md between <!-- bench:NAME --> and <!-- /bench:NAME --> markers.

README.md's results are written by hand from them (its markers, if any, are filled the same way).

    python bench/readme.py
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (ROOT / "bench" / "README.md", ROOT / "README.md")


def main() -> None:
    for readme in TARGETS:
        text = readme.read_text()
        for md in sorted((ROOT / "bench" / "results").glob("*.md")):
            name = md.stem
            pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
            if pat.search(text):
                text = pat.sub(lambda m: m.group(1) + md.read_text().strip() + "\n" + m.group(2), text)
                print(f"{readme.relative_to(ROOT)}: {name} updated")
        readme.write_text(text)


if __name__ == "__main__":
    main()
