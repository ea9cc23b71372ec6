# Local Kubernetes cluster and images without a registry (included by the Makefile).
# See docs/cluster.md. Needs root (interfaces, mounts, iptables, dockerd).
TFE_VERSION := $(shell cat VERSION)
# The local OCI registry cluster-up runs (named once, in hack/cluster/versions.sh); make push
# REGISTRY=... for another.
LOCAL_REGISTRY := $(shell . hack/cluster/versions.sh && echo $$LOCAL_REGISTRY)
REGISTRY ?=

.PHONY: cluster-up cluster-down cluster-down-check cluster-status images push cluster-smoke

cluster-up: ## start the local single-node Kubernetes (host processes, offline); idempotent
	hack/cluster/cluster.sh up

cluster-down: ## stop the local cluster and remove its interfaces, iptables chains, mounts, state
	hack/cluster/cluster.sh down

cluster-down-check: ## cluster-down beside a foreign KUBE-TEST chain, CNI-TEST chain and cni-test netns: they stay, ours go
	hack/cluster/down-check.sh

cluster-status: ## which local cluster processes run, and the node
	hack/cluster/cluster.sh status

images: guard ## build tfe-operator/{worker,operator}:VERSION offline (debootstrap base) and import them into the cluster
	hack/cluster/images.sh

push: ## push the built images to REGISTRY/tfe-operator/{worker,operator}:VERSION (make images push REGISTRY=127.0.0.1:5000)
	@test -n "$(REGISTRY)" || { echo "set REGISTRY, e.g. make push REGISTRY=$(LOCAL_REGISTRY) or REGISTRY=ghcr.io/OWNER"; exit 2; }
	hack/cluster/images.sh push "$(REGISTRY)"

cluster-smoke: ## smoke-test the cluster: local image, headless DNS, ClusterIP from pod+host, restart
	hack/cluster/smoke.sh
