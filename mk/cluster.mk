# Local Kubernetes cluster and images without a registry (included by the Makefile).
# See docs/cluster.md. Needs root (interfaces, mounts, iptables, dockerd).
TFE_VERSION := $(shell cat VERSION)

.PHONY: cluster-up cluster-down cluster-status images cluster-smoke

cluster-up: ## start the local single-node Kubernetes (host processes, offline); idempotent
	hack/cluster/cluster.sh up

cluster-down: ## stop the local cluster and remove its interfaces, iptables chains, mounts, state
	hack/cluster/cluster.sh down

cluster-status: ## which local cluster processes run, and the node
	hack/cluster/cluster.sh status

images: guard ## build tfe-operator/{worker,operator}:VERSION offline (debootstrap base) and import them into the cluster
	hack/cluster/images.sh

cluster-smoke: ## smoke-test the cluster: local image, headless DNS, ClusterIP from pod+host, restart
	hack/cluster/smoke.sh
