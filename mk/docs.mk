.PHONY: docs

docs: $(VENV)/.stamp ## regenerate the references: docs/operator.md tables (from the CRD), chart README + values.schema.json (from values.yaml)
	$(PY) -m tfe_operator.docgen
