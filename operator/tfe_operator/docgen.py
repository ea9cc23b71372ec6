"""Generated references: one source per fact (issue 13).

- The CRD's descriptions are the spec and status reference: ``crd_reference`` renders them
  into docs/operator.md (between ``<!-- BEGIN GENERATED spec -->`` markers).
- The chart's values.yaml is the chart reference: ``# -- text`` above a key documents it
  (helm-docs style, continued by following ``#`` lines), ``# @schema {json}`` adds JSON Schema
  keywords (enum, minimum, ...). ``chart_readme`` writes charts/tfe-operator/README.md and
  ``values_schema`` writes values.schema.json from it.

``python -m tfe_operator.docgen`` rewrites the generated files; ``--check`` fails when one is
stale (``make test`` runs the same check as a unit test). Everything here is pure except main.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "charts" / "tfe-operator" / "crds" / "encryptedmodels.tfe.dev.yaml"
CHART = REPO / "charts" / "tfe-operator"
OPERATOR_DOC = REPO / "docs" / "operator.md"


class DocError(ValueError):
    """A source lacks what the generated reference needs (e.g. a field without description)."""


# -------------------------------------------------------------------------- generated sections


def begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: python -m tfe_operator.docgen -->"


def end(name: str) -> str:
    return f"<!-- END GENERATED {name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` replaced by ``body`` (markers kept)."""
    b, e = begin(name), end(name)
    if text.count(b) != 1 or text.count(e) != 1:
        raise DocError(f"expected exactly one {b!r} ... {e!r} pair")
    i, j = text.index(b) + len(b), text.index(e)
    if j < i:
        raise DocError(f"{e!r} comes before {b!r}")
    return text[:i] + "\n" + body.rstrip("\n") + "\n" + text[j:]


def _cell(text: str) -> str:
    """One Markdown table cell: one line, pipes escaped, angle brackets not taken for HTML."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


# -------------------------------------------------------------------------- the CRD


@dataclass(frozen=True)
class Row:
    path: str
    default: str
    text: str


def _constraints(s: Mapping[str, Any]) -> str:
    out = []
    if "enum" in s:
        out.append("One of " + ", ".join(f"`{v}`" for v in s["enum"]) + ".")
    lo, hi = s.get("minimum"), s.get("maximum")
    if lo is not None and hi is not None:
        out.append(f"{lo}…{hi}.")
    elif lo is not None:
        out.append(f"≥ {lo}.")
    elif hi is not None:
        out.append(f"≤ {hi}.")
    if s.get("minItems") is not None and s.get("minItems") == s.get("maxItems"):
        out.append(f"Exactly {s['minItems']} items.")
    return " ".join(out)


def _default(s: Mapping[str, Any]) -> str:
    if "default" not in s:
        return ""
    d = s["default"]
    if d == {}:
        return ""
    return f"`{json.dumps(d) if not isinstance(d, str) else d}`"


def _children(s: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """('', props) for an object, ('[]', props) for an array of objects, else None."""
    if s.get("properties"):
        return "", s["properties"]
    items = s.get("items")
    if isinstance(items, Mapping) and items.get("properties"):
        return "[]", items["properties"]
    return None


def _brief(props: Mapping[str, Any]) -> str:
    parts = []
    for k, c in props.items():
        d = c.get("default")
        parts.append(f"{k}={d}" if d is not None and not isinstance(d, (dict, list)) else k)
    return "{" + ", ".join(parts) + "}"


def schema_rows(s: Mapping[str, Any], path: str) -> list[Row]:
    """One row per described property, depth first. An object (or array of objects) whose
    properties carry no description is one row listing them as ``{a, b=default}``; in one whose
    properties are described, every property must be."""
    rows: list[Row] = []
    kids = _children(s)
    if kids is None:
        return rows
    suffix, props = kids
    described = [k for k, c in props.items() if c.get("description")]
    if not described:
        return rows
    missing = [k for k in props if k not in described]
    if missing:
        raise DocError(f"{path}{suffix}: properties without description: {', '.join(missing)}")
    for k, c in props.items():
        p = f"{path}{suffix}.{k}" if path else k
        sub = _children(c)
        name = f"`{p}`"
        if sub is not None and not any(x.get("description") for x in sub[1].values()):
            name += f" `{_brief(sub[1])}`" if not sub[0] else f" `[{_brief(sub[1])}]`"
        text = " ".join(x for x in (str(c["description"]).strip(), _constraints(c)) if x)
        rows.append(Row(name, _default(c), text))
        rows += schema_rows(c, p)
    return rows


def table(rows: Sequence[Row], with_default: bool) -> str:
    if with_default:
        out = ["| field | default | meaning |", "|---|---|---|"]
        out += [f"| {r.path} | {r.default} | {_cell(r.text)} |" for r in rows]
    else:
        out = ["| field | meaning |", "|---|---|"]
        out += [f"| {r.path} | {_cell(r.text)} |" for r in rows]
    return "\n".join(out) + "\n"


def crd_schema(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    schema: Mapping[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def crd_reference(crd: Mapping[str, Any]) -> dict[str, str]:
    """{"spec": table, "status": table} from the CRD's descriptions."""
    props = crd_schema(crd)["properties"]
    return {
        "spec": table(schema_rows(props["spec"], ""), with_default=True),
        "status": table(schema_rows(props["status"], ""), with_default=False),
    }


# -------------------------------------------------------------------------- values.yaml


@dataclass
class Value:
    path: str  # dotted
    description: str
    schema: dict[str, Any] = field(default_factory=dict)


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*):(?:\s|$)")


def parse_values_comments(text: str) -> dict[str, Value]:
    """Key path -> its ``# --`` description and ``# @schema`` keywords."""
    out: dict[str, Value] = {}
    stack: list[tuple[int, str]] = []
    doc: list[str] | None = None
    extra: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc = [stripped[4:].strip()]
            continue
        if stripped.startswith("# @schema"):
            try:
                more = json.loads(stripped[len("# @schema") :])
            except json.JSONDecodeError as e:
                raise DocError(f"values.yaml:{n}: @schema is not JSON: {e}") from e
            if not isinstance(more, dict):
                raise DocError(f"values.yaml:{n}: @schema must be a JSON object")
            extra.update(more)
            continue
        if stripped.startswith("#"):
            if doc is not None:
                doc.append(stripped[1:].strip())
            continue
        if not stripped:
            doc, extra = None, {}
            continue
        m = _KEY.match(line)
        if m is None or stripped.startswith("-"):
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [m.group("key")])
        stack.append((indent, m.group("key")))
        if doc is not None or extra:
            out[path] = Value(path, " ".join(x for x in (doc or []) if x), dict(extra))
        doc, extra = None, {}
    return out


def _walk(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in values.items():
        p = f"{prefix}.{k}" if prefix else k
        yield p, v
        if isinstance(v, Mapping) and v:
            yield from _walk(v, p)


def documented_values(text: str) -> list[tuple[str, Any, Value]]:
    """Rows of the chart reference: each documented key whose descendants are not documented,
    or each documented leaf; every leaf must be covered by itself or a documented ancestor."""
    values = yaml.safe_load(text) or {}
    docs = parse_values_comments(text)
    rows = []
    for path, v in _walk(values):
        d = docs.get(path)
        if d is None or not d.description:
            continue
        nested = [p for p in docs if p.startswith(path + ".") and docs[p].description]
        if isinstance(v, Mapping) and v and nested:
            continue  # its keys have their own rows
        rows.append((path, v, d))
    covered = {p for p, _, _ in rows}
    for path, v in _walk(values):
        leaf = not (isinstance(v, Mapping) and v)
        if leaf and not any(path == c or path.startswith(c + ".") for c in covered):
            raise DocError(f"values.yaml: {path} has no '# --' description (nor an ancestor)")
    return rows


def _type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def chart_readme(text: str, chart: Mapping[str, Any]) -> str:
    lines = [
        f"# {chart['name']}",
        "",
        str(chart.get("description", "")).strip(),
        "",
        f"Chart version {chart['version']}, app version {chart.get('appVersion', '')}.",
        "Install, use and uninstall: the repository's README.md and docs/operator.md.",
        "This file is generated from the `# --` comments in values.yaml",
        "(`python -m tfe_operator.docgen`); do not edit it by hand.",
        "",
        "## Values",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for path, v, d in documented_values(text):
        default = json.dumps(v)
        lines.append(f"| `{path}` | {_type(v)} | `{_cell(default)}` | {_cell(d.description)} |")
    return "\n".join(lines) + "\n"


def _schema_for(v: Any, path: str, docs: Mapping[str, Value]) -> dict[str, Any]:
    d = docs.get(path)
    s: dict[str, Any]
    opaque = d is not None and not any(p.startswith(path + ".") for p in docs)
    if isinstance(v, Mapping) and v and not opaque:
        s = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: _schema_for(c, f"{path}.{k}" if path else str(k), docs) for k, c in v.items()
            },
        }
    elif isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)):
        s = {"type": "number" if isinstance(v, float) else "integer"}
    else:
        s = {"type": _type(v)}
    if d is not None:
        if d.description:
            s["description"] = d.description
        s.update(d.schema)
        if "enum" in d.schema:
            s.pop("type", None)
    return s


def values_schema(text: str) -> dict[str, Any]:
    values = yaml.safe_load(text) or {}
    docs = parse_values_comments(text)
    documented_values(text)  # every leaf documented
    root = _schema_for(values, "", docs)
    return {"$schema": "http://json-schema.org/draft-07/schema#", **root}


# -------------------------------------------------------------------------- files


def outputs(repo: Path = REPO) -> dict[Path, str]:
    """Every generated file's path and wanted content."""
    crd = yaml.safe_load((repo / CRD.relative_to(REPO)).read_text())
    chart_dir = repo / CHART.relative_to(REPO)
    values = (chart_dir / "values.yaml").read_text()
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    doc_path = repo / OPERATOR_DOC.relative_to(REPO)
    doc = doc_path.read_text()
    for name, body in crd_reference(crd).items():
        doc = replace_section(doc, name, body)
    return {
        doc_path: doc,
        chart_dir / "README.md": chart_readme(values, chart),
        chart_dir / "values.schema.json": json.dumps(values_schema(values), indent=2) + "\n",
    }


def stale(repo: Path = REPO) -> list[Path]:
    return [p for p, want in outputs(repo).items() if not p.exists() or p.read_text() != want]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    a = ap.parse_args(argv)
    if a.check:
        bad = stale()
        for p in bad:
            rel = p.relative_to(REPO)
            print(f"stale: {rel} (run: python -m tfe_operator.docgen)", file=sys.stderr)
        return 1 if bad else 0
    for p, want in outputs().items():
        if not p.exists() or p.read_text() != want:
            p.write_text(want)
            print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
