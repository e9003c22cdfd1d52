"""Copy bench/results/NAME.md into README.md between <!-- bench:NAME --> and <!-- /bench:NAME --> markers.

    python bench/readme.py
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for md in sorted((ROOT / "bench" / "results").glob("*.md")):
        name = md.stem
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if pat.search(text):
            text = pat.sub(lambda m: m.group(1) + md.read_text().strip() + "\n" + m.group(2), text)
            print(f"README: {name} updated")
    readme.write_text(text)


if __name__ == "__main__":
    main()
