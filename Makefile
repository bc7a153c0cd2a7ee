# COAT: `make demo` and `make test` do all set-up on a fresh machine (root).
SHELL     := /bin/bash
GO        ?= go
BIN       := bin
export CGO_ENABLED := 0
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build deps demo test unit vet bench bench-full chaos lab-down clean

all: build

build:
	$(GO) build -trimpath -o $(BIN)/coat ./cmd/coat
	$(GO) build -trimpath -o $(BIN)/coat-sample ./cmd/coat-sample

deps:
	bash scripts/install-deps.sh

demo: deps build
	bash scripts/demo.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l cmd internal)" || (gofmt -l cmd internal; echo "gofmt needed"; exit 1)

unit:
	$(GO) test ./...

# The whole suite: unit tests and, as root, the end-to-end tests on real
# namespaces, runc, CRIU and VXLAN.
test: deps build vet
	$(GO) test -count=1 -timeout 25m ./...

# The paper's evaluation on the lab (10 runs per mode for coat and
# traditional, 5 for the others) plus a reduced matrix of the memory and
# conns workloads (lan only: redis of 1 GiB and 1, 1,000 connections, one
# run per strategy), and handover storms of 5 and 20 services (3 roams
# each, under a minute): under 15 minutes. docs/bench/.
bench: deps build
	$(BIN)/coat --lab bench bench --workloads sample,sockperf,iperf3,memory,conns,storm --runs 10 --ref-runs 5 \
	  --profiles lan --mem-sizes 1GiB --conn-counts 1,1000 --matrix-runs 1 --storm-sizes 5,20 --storm-runs 3 --out docs/bench; \
	  rc=$$?; $(BIN)/coat --lab bench lab down; exit $$rc

# Everything: the paper's evaluation, the whole matrix (redis of 64 MiB,
# 256 MiB and 1 GiB; 1, 100 and 1,000 connections; links lan, 1gbit and
# edge; every strategy, 3 runs each) and handover storms (5 and 20
# services following the roaming client, 3 roams each). Well over 15 minutes: the edge
# profile moves each GiB at 100 Mbit/s.
bench-full: deps build
	$(BIN)/coat --lab bench bench --workloads sample,sockperf,iperf3,memory,conns,storm \
	  --profiles lan,1gbit,edge --mem-sizes 64MiB,256MiB,1GiB --conn-counts 1,100,1000 --matrix-runs 3 \
	  --storm-sizes 5,20 --storm-runs 3 --out docs/bench; \
	  rc=$$?; $(BIN)/coat --lab bench lab down; exit $$rc

# Faults mid-migration: 200 migrations of 4 containers on a 3-host lab
# while agents are killed, hosts partitioned and etcd killed at random;
# then every container must run exactly once, intact (a few minutes).
CHAOS_SEED ?= 1
chaos: deps build
	$(BIN)/coat --lab chaos lab up --hosts 3 && \
	  $(BIN)/coat --lab chaos chaos --migrations 200 --seed $(CHAOS_SEED); \
	  rc=$$?; $(BIN)/coat --lab chaos lab down; exit $$rc

lab-down:
	$(BIN)/coat lab down

clean:
	rm -rf $(BIN)
