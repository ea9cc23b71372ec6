# kind cluster for end-to-end tests (included by the Makefile). See docs/cluster.md ("kind").
# 1 control plane + 3 workers; offline it runs on a node image built here (kube-router enforces
# NetworkPolicy); with a registry it runs on kind's public kindest/node.
KIND_DIR ?= $(CURDIR)/.kind
KIND_KUBECTL = $(shell hack/cluster/build.sh path)/kubectl

.PHONY: kind-up kind-down kind-down-check kind-image kind-load kind-e2e

kind-image: ## build the offline kind node image tfe-kind/node (debootstrap trixie + k8s from Go modules + pre-loaded images)
	hack/kind/node-image.sh build

kind-up: ## create the kind cluster (1 control plane + 3 workers; offline node image when no registry answers)
	hack/kind/kind.sh up

kind-load: ## load the worker and operator images (make images) into the kind nodes
	hack/kind/kind.sh load

kind-e2e: $(VENV)/.stamp $(WVENV)/.stamp ## the cluster suite on kind (make kind-up images kind-load first): spread Required, NetworkPolicy enforced
	TFE_KUBECONFIG=$(KIND_DIR)/kubeconfig TFE_KUBECTL=$(KIND_KUBECTL) TFE_E2E_CLUSTER=kind TFE_REGISTRY= \
	  $(VENV)/bin/pytest -m cluster -v -rs tests/cluster

kind-down: ## delete the kind cluster and its host routes
	hack/kind/kind.sh down

kind-down-check: ## kind-down, then check it left no node container, volume, host route, kind network, kube-router chain/ipset
	hack/kind/down-check.sh
