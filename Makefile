# flotilla: see README.md. Every target works on a clean clone as root on Debian 12.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/flotilla
export CGO_ENABLED=0

.PHONY: deps build build-all test test-unit fuzz lint bench bench-distribution bench-mirror bench-scale demo demo-containers demo-k8s demo-down package clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/flotilla

build-all:
	GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flotilla-linux-amd64 ./cmd/flotilla
	GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flotilla-linux-arm64 ./cmd/flotilla

# deps installs what the tests need (Debian packages, the fleet's cached rootfs) when root.
deps:
	./.ci/deps.sh

# test runs every test (unit, integration, e2e where the machine allows) and a short fuzz run.
# The sandbox-fleet tests run a second time right after the first, and nothing of
# theirs may be left at the end: state one run leaves behind must not break the next.
test: deps build lint
	@# In CI, the Kubernetes binaries of examples/kubernetes (TestKubernetes) are built
	@# here when not cached: 15 to 45 minutes on 2 cores, then seconds.
	@if [ -n "$$CI" ]; then ./examples/kubernetes/build.sh; fi
	FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 25m ./...
	@# Controller failover, 20 runs in a row (about 4 minutes): a flake of one run in
	@# three once passed a single run unnoticed.
	FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=20 -timeout 15m -run '^TestControllerFailover$$' ./controller/clustertest/
	@# examples/kubernetes/tools is a module of its own: its PKI tool guards the cluster's
	@# CA keys. (Its DNS tests link client-go: minutes on 2 cores; run them by hand.)
	cd examples/kubernetes/tools && $(GO) test -count=1 ./pki
	@# The fleet tests again (Kubernetes aside: it alone takes minutes), right after the first run.
	FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 10m -skip '^TestKubernetes$$' ./e2e/...
	./.ci/check-clean.sh
	$(MAKE) fuzz

test-unit:
	$(GO) test -count=1 -short ./...

fuzz:
	GO=$(GO) ./.ci/fuzz.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null; find . -name '*.go' -newer go.mod -not -path './.git/*' 2>/dev/null) | sort -u); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench: build
	FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -run='^$$' -bench=. -benchtime=20x ./...

bench-distribution: build
	FLOTILLA_BENCH=1 FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -run='^TestDistributionBenchmark$$' -v -timeout 60m ./bench/

# bench-mirror: 5 sandbox nodes with containerd pull ten carried container images
# (200 MiB) through their node's mirror, then from a registry on the controller host.
bench-mirror: build
	FLOTILLA_BENCH=1 FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -run='^TestMirrorPullBenchmark$$' -v -timeout 40m ./bench/

# bench-scale: one controller process and 2,000 agents (real agent code, stub
# executors) on loopback; prints the table and writes it to the READMEs.
bench-scale: build
	FLOTILLA_BENCH=1 FLOTILLA_SCALE_AGENTS=$${FLOTILLA_SCALE_AGENTS:-2000} FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -run='^TestScale$$' -v -timeout 60m ./bench/

demo: build
	./e2e/demo.sh

demo-containers: build
	./e2e/demo.sh containers

demo-down:
	./e2e/demo.sh down

# demo-k8s builds examples/kubernetes (the Kubernetes binaries from the Go module,
# about 15 minutes on 2 cores the first time, then cached under /var/cache/flotilla-k8s),
# boots 5 sandbox nodes (fleet fltk, 10.77.11.0/27), applies 3 masters + 2 workers
# and proves the cluster (e2e TestKubernetes), printing each stage's time.
demo-k8s: build
	./examples/kubernetes/build.sh
	FLOTILLA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 60m -run '^TestKubernetes$$' ./e2e/

package: build-all
	$(GO) run ./packaging/cmd/mkdeb -version $(VERSION) -out bin/

clean:
	rm -rf bin/
