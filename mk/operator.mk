# Operator entry points (included by the Makefile).
KUBECONFIG_E2E ?= $(CURDIR)/.cluster/kubeconfig

.PHONY: e2e operator-unit operator-run crd

operator-unit: $(VENV)/.stamp ## operator unit tests only (builders, CRD schema, state machine)
	$(VENV)/bin/pytest -q tests/unit/operator

e2e: $(VENV)/.stamp $(WVENV)/.stamp ## cluster tests on .cluster/kubeconfig (make cluster-up images push REGISTRY=127.0.0.1:5000 first)
	TFE_KUBECONFIG=$(KUBECONFIG_E2E) TFE_REGISTRY=$(LOCAL_REGISTRY) $(VENV)/bin/pytest -m cluster -v -rs tests/cluster

operator-run: $(VENV)/.stamp ## run the operator locally against .cluster/kubeconfig (Ctrl-C stops it)
	KUBECONFIG=$(KUBECONFIG_E2E) TFE_OPERATOR_HTTP_MODE=proxy TFE_OPERATOR_METRICS_HOST=127.0.0.1 \
	  TFE_OPERATOR_LIVENESS_HOST=127.0.0.1 $(VENV)/bin/tfe-operator

crd: ## install/refresh the EncryptedModel CRD on .cluster/kubeconfig
	.cluster/bin/kubectl --kubeconfig $(KUBECONFIG_E2E) apply --server-side -f charts/tfe-operator/crds/
