# Local Kubernetes cluster and images without a registry (included by the Makefile).
# See docs/cluster.md. Needs root (interfaces, mounts, iptables, dockerd).
TFE_VERSION := $(shell cat VERSION)
KIND ?= kind
KIND_CLUSTER ?= tfe

.PHONY: cluster-up cluster-down cluster-status images cluster-smoke kind-up kind-down

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

kind-up: ## (needs internet + docker + kind) same cluster on kind: create, build from public bases, load, smoke
	mkdir -p .cluster
	$(KIND) create cluster --name $(KIND_CLUSTER) --kubeconfig .cluster/kubeconfig --wait 180s
	docker build -f worker-image/Dockerfile -t tfe-operator/worker:$(TFE_VERSION) .
	docker build -f operator/Dockerfile -t tfe-operator/operator:$(TFE_VERSION) .
	$(KIND) load docker-image --name $(KIND_CLUSTER) tfe-operator/worker:$(TFE_VERSION) tfe-operator/operator:$(TFE_VERSION)
	SMOKE_NODE_EXEC="docker exec $(KIND_CLUSTER)-control-plane" hack/cluster/smoke.sh

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
