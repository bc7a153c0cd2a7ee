# COAT: `make demo` and `make test` do all set-up on a fresh machine (root).
SHELL     := /bin/bash
GO        ?= go
BIN       := bin
export CGO_ENABLED := 0
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build deps demo test unit vet bench lab-down clean

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

# The paper's evaluation on the lab (about 12 minutes): docs/bench/.
bench: deps build
	$(BIN)/coat --lab bench bench --out docs/bench; rc=$$?; $(BIN)/coat --lab bench lab down; exit $$rc

lab-down:
	$(BIN)/coat lab down

clean:
	rm -rf $(BIN)
