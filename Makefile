# Keybrake. `make dev` runs it locally; `make test` runs every check CI runs.
# Both install what they need: nothing is assumed to be installed by hand.

SHELL := /bin/bash
CARGO_BIN := $(HOME)/.cargo/bin
WORKER_BUILD_VERSION := 0.8.7
# Must equal the wasm-bindgen pinned in Cargo.toml.
WASM_BINDGEN_VERSION := 0.2.130

export PATH := $(CARGO_BIN):$(CURDIR)/node_modules/.bin:$(PATH)
# worker-build would download wasm-bindgen from GitHub; use the one installed from crates.io.
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
# ... and wasm-opt from the npm package binaryen, for the same reason, through a wrapper that
# leaves out the function names worker-build would keep (scripts/wasm-opt.sh).
export WASM_OPT_BIN := $(CURDIR)/scripts/wasm-opt.sh
export WRANGLER_SEND_METRICS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false

.PHONY: all tools build lint unit e2e examples packages packages-build spec test dev clean bench bench-smoke fuzz fuzz-smoke \
	soak soak-smoke beside-fuzz spec-then-bench-smoke console chromium bench-profile

# A half-written build/index.js must not look up to date.
.DELETE_ON_ERROR:

all: build

tools:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@worker-build --version 2>/dev/null | grep -qx '$(WORKER_BUILD_VERSION)' \
		|| cargo install worker-build --version $(WORKER_BUILD_VERSION) --locked
	@wasm-bindgen --version 2>/dev/null | grep -q ' $(WASM_BINDGEN_VERSION)$$' \
		|| cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)
	@[ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund

# Everything the wasm is compiled from, the OpenAPI document and the console included
# (include_str!). When
# none is newer than build/index.js, `make build` does nothing: `make dev` and the build
# command wrangler runs on start and on every change stay instant.
BUILD_INPUTS := Cargo.toml Cargo.lock openapi/openapi.json scripts/wasm-opt.sh $(shell find src console -type f)

build: tools build/index.js

build/index.js: $(BUILD_INPUTS) | tools
	worker-build --release
	@touch $@

lint: tools
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target wasm32-unknown-unknown -- -D warnings

unit:
	cargo test

e2e: build
	node --test --test-concurrency=1 tests/e2e/

# The TypeScript packages (packages/): `keybrake` and `@keybrake/inngest`, each compiled by tsc
# into an ES module and a CommonJS build with types (the client's types generated from
# openapi/openapi.json).
packages-build: tools
	node packages/build.mjs

# Their tests, against the built Worker with the real SDKs; pack.test.mjs installs the packed
# tarballs into a fresh project.
PACKAGE_TESTS := $(sort $(wildcard packages/*/test/*.test.mjs packages/test/*.test.mjs))
packages: build packages-build
	node --test --test-concurrency=1 $(PACKAGE_TESTS)

# The console in headless Chromium (tests/console/), driven by playwright-core. Debian's
# `chromium` is installed when missing and apt-get can; otherwise the step is skipped, loudly.
# CHROMIUM_BIN=/path/to/chrome points it at another build.
CHROMIUM_BIN ?= $(shell command -v chromium 2>/dev/null)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
console: build
	@bin='$(CHROMIUM_BIN)'; \
	if [ -z "$$bin" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the console tests (apt-get)..."; \
		{ $(SUDO) apt-get install -y -q chromium >/dev/null || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; } \
			&& bin=$$(command -v chromium); \
	fi; \
	if [ -z "$$bin" ]; then \
		echo; echo "!!! SKIPPED: the console browser tests need Chromium, and none was found or installed."; \
		echo "!!! Install Debian's chromium, or run: make console CHROMIUM_BIN=/path/to/chromium"; echo; \
	else \
		CHROMIUM_BIN="$$bin" node --test --test-concurrency=1 tests/console/; \
	fi

# The Inngest example, on the packages: type-checked and run with the real inngest SDK.
examples: build packages-build
	tsc -p examples/inngest/tsconfig.json
	node --import tsx --test examples/inngest/billing-agent.test.ts

# schemathesis against the OpenAPI document and the local Worker; run.sh makes its own venv.
spec: build
	tests/spec/run.sh

test: lint unit e2e console examples packages beside-fuzz soak-smoke

# The fuzzer is one busy core for 20 s and judges no time: it runs beside the schemathesis run
# and the bench smoke, which judge no speed either, never beside the timing-sensitive steps.
beside-fuzz: build
	@$(MAKE) --no-print-directory -j2 spec-then-bench-smoke fuzz-smoke

spec-then-bench-smoke:
	@$(MAKE) --no-print-directory spec
	@$(MAKE) --no-print-directory bench-smoke

# `make dev PORT=8788` to choose another port; a PORT in the environment is ignored, since
# shells often carry one for something else. dev.sh checks the port before building.
PORT := 8787
dev:
	@PORT=$(PORT) ./scripts/dev.sh

clean:
	rm -rf build bench/floor/build target node_modules .wrangler fuzz/target .venv-spec .tools packages/*/dist packages/*/node_modules \
		packages/client/src/openapi.gen.ts examples/inngest/node_modules

# The floor the bench measures the guard against: a bare pass-through Worker (bench/floor/),
# its own crate, built with the same worker-build, wasm-bindgen and wasm-opt. It shares
# target/ so cargo reuses the dependencies Keybrake's build compiled; `make build` never
# builds it.
FLOOR_INPUTS := bench/floor/Cargo.toml bench/floor/Cargo.lock $(shell find bench/floor/src -type f)

bench/floor/build/index.js: $(FLOOR_INPUTS) | tools
	cd bench/floor && CARGO_TARGET_DIR=$(CURDIR)/target worker-build --release
	@touch $@

bench: build bench/floor/build/index.js
	node bench/run.mjs

bench-smoke: build bench/floor/build/index.js
	node bench/run.mjs --smoke

# Where workerd's CPU goes, by kind of work, in a guarded call and in the floor's (V8's CPU
# profile through the inspector). Profiles a copy of the release build that keeps its function
# names (worker-build's own wasm-opt flags), in target/bench-profile/; writes bench/profile.json.
bench-profile: build bench/floor/build/index.js
	WASM_OPT_BIN=$(CURDIR)/node_modules/.bin/wasm-opt worker-build --release --out-dir target/bench-profile
	node bench/profile.mjs

# Fuzzes request-path canonicalization and allowlist matching; fuzz/run.sh installs cargo-fuzz
# into .tools/cargo-fuzz.
fuzz:
	bash fuzz/run.sh 300

fuzz-smoke:
	bash fuzz/run.sh 20

# The randomized checker (tests/soak/): seeded concurrent charges, retries, faults, aborts,
# revokes and expiries, judged against the vendor fake. A failure prints a shrunk op log.
SEED ?= 1
OPS ?= 2000
soak: build
	node tests/soak/soak.mjs --seed $(SEED) --ops $(OPS)

# A fixed seed, sized to pass in under a minute (about 20 s here): a CI gate.
soak-smoke: build
	node tests/soak/soak.mjs --seed 7 --ops 1500 --shrink-seconds 30
