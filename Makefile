# Podmesh build, test, demo and benchmark entry points.
#
# Every target installs what it needs by itself: Debian packages through apt-get, Go modules
# through the module proxy, and the external programs the tests and benchmarks run against
# (Consul, Prometheus, Jaeger, vegeta, staticcheck), each built once from its own tools module
# under tools/ and cached in $(TOOLBIN) under a versioned name, so a version bump rebuilds it
# and nothing else ever does.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO          ?= go
CACHE       ?= $(HOME)/.cache/podmesh
TOOLBIN     ?= $(CACHE)/bin
BIN         ?= $(CURDIR)/bin
GOTESTFLAGS ?=
TEST_TIMEOUT ?= 14m

CONSUL_VERSION      := v1.14.0
PROMETHEUS_VERSION  := v0.316.0
JAEGER_VERSION      := v1.76.0
VEGETA_VERSION      := v12.13.0
STATICCHECK_VERSION := v0.8.2

CONSUL      := $(TOOLBIN)/consul-$(CONSUL_VERSION)
PROMETHEUS  := $(TOOLBIN)/prometheus-$(PROMETHEUS_VERSION)
JAEGER      := $(TOOLBIN)/jaeger-$(JAEGER_VERSION)
VEGETA      := $(TOOLBIN)/vegeta-$(VEGETA_VERSION)
STATICCHECK := $(TOOLBIN)/staticcheck-$(STATICCHECK_VERSION)

# Debian packages: command -> package. Installed only when the command is missing.
APT_PKGS := curl:curl wrk:wrk nginx:nginx-light openssl:openssl h2load:nghttp2-client \
            nft:nftables ip:iproute2 haproxy:haproxy

# The environment the tests read to find the real programs (internal/testutil).
TOOL_ENV := PODMESH_CONSUL_BIN=$(CONSUL) PODMESH_PROMETHEUS_BIN=$(PROMETHEUS) \
            PODMESH_JAEGER_BIN=$(JAEGER) PODMESH_VEGETA_BIN=$(VEGETA) PODMESH_REQUIRE_TOOLS=1

PROGRAMS := registry sidecar launcher
# The shop demo (examples/shop): its three services and the demo's load generator, in $(BIN)/shop.
SHOP     := frontend catalog prices loadgen

.PHONY: all build test lint vet fmt-check staticcheck unit demo bench tools apt-deps clean help

all: build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build the three programs, podmesh-init and the shop demo into ./bin
	@mkdir -p $(BIN)/shop
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(PROGRAMS)) ./launcher/initproc/podmesh-init
	$(GO) build -o $(BIN)/shop/ $(addprefix ./examples/shop/,$(SHOP))

# ---------------------------------------------------------------------------------------------
# Dependencies

apt-deps: ## install the Debian packages the tests, demo and benchmarks use
	@missing=""; for pair in $(APT_PKGS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	fi

tools: $(CONSUL) $(PROMETHEUS) $(JAEGER) $(VEGETA) $(STATICCHECK) ## build every external Go tool once

# Each tool builds inside its own module (tools/<name>/go.mod), so it gets the dependency
# versions it was released with. The versioned file name is the cache key.
$(CONSUL):
	@mkdir -p $(TOOLBIN); echo "building consul $(CONSUL_VERSION) (once; takes minutes)"
	cd tools/consul && $(GO) build -o $@.tmp github.com/hashicorp/consul && mv $@.tmp $@

$(PROMETHEUS):
	@mkdir -p $(TOOLBIN); echo "building prometheus $(PROMETHEUS_VERSION) (once; takes minutes)"
	cd tools/prometheus && $(GO) build -o $@.tmp github.com/prometheus/prometheus/cmd/prometheus && mv $@.tmp $@

$(JAEGER):
	@mkdir -p $(TOOLBIN); echo "building jaeger $(JAEGER_VERSION) (once; takes minutes)"
	cd tools/jaeger && $(GO) build -o $@.tmp github.com/jaegertracing/jaeger/cmd/jaeger && mv $@.tmp $@

$(VEGETA):
	@mkdir -p $(TOOLBIN); echo "building vegeta $(VEGETA_VERSION)"
	cd tools/vegeta && $(GO) build -o $@.tmp github.com/tsenart/vegeta/v12 && mv $@.tmp $@

$(STATICCHECK):
	@mkdir -p $(TOOLBIN); echo "building staticcheck $(STATICCHECK_VERSION)"
	cd tools/staticcheck && $(GO) build -o $@.tmp honnef.co/go/tools/cmd/staticcheck && mv $@.tmp $@

# ---------------------------------------------------------------------------------------------
# Checks and tests

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './tools/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	@bash scripts/vet.sh

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

lint: fmt-check vet staticcheck ## gofmt, go vet, project rules, staticcheck

unit: ## go test -race without the external tools (integration tests skip)
	$(GO) test -race -count=1 $(GOTESTFLAGS) ./...

test: apt-deps tools lint build ## everything CI runs: lint, then all tests with -race against the real tools
	$(TOOL_ENV) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./...

# ---------------------------------------------------------------------------------------------
# Demo and benchmarks

demo: apt-deps build ## run the example microservices and print a summary
	@bash examples/demo.sh

bench: apt-deps tools build ## benchmarks, printed as ratios against baselines from the same run
	@$(TOOL_ENV) bash bench/run.sh

clean:
	rm -rf $(BIN)
