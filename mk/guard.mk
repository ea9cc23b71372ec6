# tfe-guard, the party-to-party mTLS proxy (included by the Makefile). See docs/mesh.md.
GUARD_DIR := worker-image/guard
GUARD_VERSION := $(shell cat VERSION)
GUARD_SRC := $(filter-out %_test.go,$(wildcard $(GUARD_DIR)/*.go)) $(GUARD_DIR)/go.mod $(GUARD_DIR)/go.sum
GO ?= go
GO_PARALLEL ?= 2
# Same module/build caches as hack/cluster/versions.sh; never fetch another toolchain.
GUARD_GOENV := GOMODCACHE=$(CACHE)/go/mod GOCACHE=$(CACHE)/go/build GOTOOLCHAIN=local \
  GOFLAGS="-p=$(GO_PARALLEL) -buildvcs=false" CGO_ENABLED=0

.PHONY: guard guard-test

build/tfe-guard: $(GUARD_SRC)
	@mkdir -p build
	cd $(GUARD_DIR) && $(GUARD_GOENV) $(GO) build -trimpath \
	  -ldflags "-s -w -X main.version=$(GUARD_VERSION)" -o ../../build/tfe-guard .

guard: build/tfe-guard ## build build/tfe-guard (static Go binary: mTLS proxy between parties)

guard-test: ## go test of tfe-guard (real TLS over loopback sockets)
	cd $(GUARD_DIR) && $(GUARD_GOENV) $(GO) test -count=1 ./...
