"""A report's page, written twice from the same sections: Markdown (``report.md``) and HTML (``index.html``),
the verdict's badge first; and the HTML made into one file with its images inlined (``report --self-contained``).

A section is ("badge", kind, text, lines), ("table", title, note, head, rows), ("figure" or "wide figure", title,
file, caption), ("text", title, lines) or ("pre", title, text); a table cell is text, or (text, href) for a link.
"""

from __future__ import annotations

import html
from pathlib import Path

from core.runs import writing_in


def markdown_page(title: str, facts: list[tuple], sections: list[tuple]) -> str:
    md = [f"# {title}", ""]
    for sec in [x for x in sections if x[0] == "badge"]:  # the verdict first, above everything
        md += [f"**Verdict: {sec[2]}**", ""] + [f"- {line}" for line in sec[3]] + [""]
    md += [", ".join(f"{k} `{v}`" for k, v in facts), ""]
    for sec in sections:
        if sec[0] == "table":
            _, name, note, head, rows = sec
            md += [f"## {name}", ""] + ([note, ""] if note else [])
            md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            md += [
                "| " + " | ".join(c if isinstance(c, str) else f"[{c[0]}]({c[1]})" for c in r) + " |" for r in rows
            ] + [""]
        elif sec[0] == "text":
            md += [f"## {sec[1]}", ""] + [f"- {line}" for line in sec[2]] + [""]
        elif sec[0] == "pre":
            md += [f"## {sec[1]}", "", "```", sec[2], "```", ""]
        elif sec[0] in ("figure", "wide figure"):
            _, name, f, cap = sec
            md += [f"## {name}", "", f"![{cap}]({f})", "", f"*{cap}*", ""]
    return "\n".join(md)


def _cell(c) -> str:
    """A table cell: text, or (text, href) for a link."""
    if isinstance(c, str):
        return f"<td>{html.escape(c)}</td>"
    return f'<td><a href="{html.escape(c[1])}">{html.escape(c[0])}</a></td>'


STYLE = (
    "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
    ".scroll{overflow-x:auto}table{border-collapse:collapse;margin:1em 0;font-size:92%}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right;white-space:nowrap}"
    "img{max-width:100%}figcaption{color:#555;font-size:90%;max-width:1100px}"
    ".wide img{max-width:none;image-rendering:pixelated}"
    ".badge{display:inline-block;font-size:130%;font-weight:bold;padding:.4em .9em;border-radius:.4em;"
    "color:#fff;background:#666}.badge.better{background:#1a7f37}.badge.worse{background:#cf222e}"
    ".headline{border-left:4px solid #888;padding:.2em 1em;margin:1em 0 1.5em}"
)


def html_page(title: str, facts: list[tuple], sections: list[tuple]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for sec in [x for x in sections if x[0] == "badge"]:  # the verdict first, above everything
        _, kind, badge, lines = sec
        body.append(
            f'<div class="headline"><span class="badge {e(kind)}">{e(badge)}</span><ul>'
            + "".join(f"<li>{e(x)}</li>" for x in lines)
            + "</ul></div>"
        )
    body.append("<p>" + ", ".join(f"{e(k)} <code>{e(v)}</code>" for k, v in facts) + "</p>")
    for sec in sections:
        if sec[0] == "table":
            _, name, note, head, rows = sec
            body.append(f"<h2>{e(name)}</h2>" + (f"<p>{e(note)}</p>" if note else ""))
            body.append(
                '<div class="scroll"><table><tr>'
                + "".join(f"<th>{e(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
                + "</table></div>"
            )
        elif sec[0] == "text":
            body.append(f"<h2>{e(sec[1])}</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in sec[2]) + "</ul>")
        elif sec[0] == "pre":
            body.append(f"<h2>{e(sec[1])}</h2><details><summary>show</summary><pre>{e(sec[2])}</pre></details>")
        elif sec[0] in ("figure", "wide figure"):
            _, name, f, cap = sec
            cls = ' class="scroll wide"' if sec[0] == "wide figure" else ""
            body.append(
                f'<h2>{e(name)}</h2><figure{cls}><img src="{e(f)}" alt="{e(cap)}">'
                f"<figcaption>{e(cap)}</figcaption></figure>"
            )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>stepadapt {e(title.lower())}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_self_contained(index: Path) -> Path:
    """``standalone.html`` beside ``index``: the same page with every image inlined as a data: URI, one file
    to mail or attach (no folder to keep together)."""
    import base64
    import re

    folder = Path(index).parent

    def inline(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        path = folder / src
        if "/" in src or not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}"'

    out = folder / "standalone.html"
    with writing_in(folder):
        out.write_text(re.sub(r'<img src="([^"]+)"', inline, Path(index).read_text()))
    return out
