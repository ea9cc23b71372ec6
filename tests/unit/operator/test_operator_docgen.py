"""Generated references (issue 13): the CRD's descriptions and values.yaml's `# --` comments are
the one source of docs/operator.md's tables, the chart README and values.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tfe_operator import docgen


def test_generated_files_are_current() -> None:
    stale = [str(p.relative_to(docgen.REPO)) for p in docgen.stale()]
    assert stale == [], f"stale generated files {stale}: run `.venv/bin/python -m tfe_operator.docgen`"


def test_every_crd_field_is_described_or_listed_under_a_described_parent() -> None:
    crd = yaml.safe_load(docgen.CRD.read_text())
    ref = docgen.crd_reference(crd)
    for field in ("`serving.maxBatchSize`", "`workers.storage.retainPolicy`", "`model.configMap` `{name, key}`"):
        assert field in ref["spec"]
    for field in ("`phase`", "`workers[].publicKey`", "`mesh.refused[].reason`"):
        assert field in ref["status"]


def test_a_field_without_description_among_described_siblings_is_an_error() -> None:
    schema = {"properties": {"a": {"type": "string", "description": "A."}, "b": {"type": "integer"}}}
    with pytest.raises(docgen.DocError, match="x: properties without description: b"):
        docgen.schema_rows(schema, "x")


def test_rows_carry_defaults_enums_ranges_and_brief_children() -> None:
    schema = {"properties": {
        "n": {"type": "integer", "description": "How many.", "default": 3, "minimum": 1, "maximum": 9},
        "mode": {"type": "string", "description": "Mode | kind.", "enum": ["a", "b"]},
        "ref": {"type": "object", "description": "A <ref>.",
                "properties": {"name": {"type": "string"}, "key": {"type": "string", "default": "k"}}},
    }}
    rows = docgen.schema_rows(schema, "")
    assert rows == [
        docgen.Row("`n`", "`3`", "How many. 1…9."),
        docgen.Row("`mode`", "", "Mode | kind. One of `a`, `b`."),
        docgen.Row("`ref` `{name, key=k}`", "", "A <ref>."),
    ]
    md = docgen.table(rows, with_default=True)
    assert "Mode \\| kind." in md and "A &lt;ref&gt;." in md


VALUES = """\
# @schema {"required": ["repository"]}
image:
  # -- The image.
  # @schema {"minLength": 1}
  repository: x/y
  # -- Its policy,
  # on two lines.
  # @schema {"enum": ["Always", "Never"]}
  pullPolicy: Always

# -- Resources (free-form).
resources:
  limits:
    cpu: 1
# -- Seconds.
# @schema {"type": "number"}
resync: 5
"""


def test_values_comments_make_the_chart_reference_and_schema() -> None:
    rows = docgen.documented_values(VALUES)
    assert [(p, d.description) for p, _, d in rows] == [
        ("image.repository", "The image."), ("image.pullPolicy", "Its policy, on two lines."),
        ("resources", "Resources (free-form)."), ("resync", "Seconds."),
    ]
    schema = docgen.values_schema(VALUES)
    image = schema["properties"]["image"]
    assert image["required"] == ["repository"] and image["additionalProperties"] is False
    assert image["properties"]["repository"] == {"type": "string", "description": "The image.", "minLength": 1}
    want = {"description": "Its policy, on two lines.", "enum": ["Always", "Never"]}
    assert image["properties"]["pullPolicy"] == want
    assert schema["properties"]["resources"] == {"type": "object", "description": "Resources (free-form)."}
    assert schema["properties"]["resync"]["type"] == "number"
    readme = docgen.chart_readme(VALUES, {"name": "c", "version": "1", "description": "d"})
    assert "| `image.pullPolicy` | string | `\"Always\"` | Its policy, on two lines. |" in readme
    json.dumps(schema)


def test_an_undocumented_value_is_an_error() -> None:
    with pytest.raises(docgen.DocError, match=r"image\.tag has no"):
        docgen.documented_values(VALUES.replace("  pullPolicy: Always\n", "  pullPolicy: Always\n  tag: v\n"))


def test_sections_are_replaced_between_their_markers_only() -> None:
    text = f"a\n{docgen.begin('spec')}\nold\n{docgen.end('spec')}\nb\n"
    assert docgen.replace_section(text, "spec", "new") == f"a\n{docgen.begin('spec')}\nnew\n{docgen.end('spec')}\nb\n"
    with pytest.raises(docgen.DocError):
        docgen.replace_section("no markers", "spec", "x")


def test_the_readme_links_the_generated_reference() -> None:
    readme = (Path(docgen.REPO) / "README.md").read_text()
    assert "docs/operator.md#spec-reference" in readme
