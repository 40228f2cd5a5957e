# wraft's two entry points. Both install what they need first, so a fresh
# machine with only rustup and cargo succeeds:
#
#   make demo   run the main job: a local wraft cluster with the example kv machine
#   make test   run the whole test suite (what CI runs, via .ci/run)
#
# Everything else here is a helper for those two.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test deps check fuzz-smoke

## Install the toolchain pieces the build needs (idempotent, quiet when present).
deps:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
	  || rustup target add wasm32-unknown-unknown
	@command -v clang >/dev/null \
	  || { echo "installing clang (guests compile C zstd for wasm32)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq clang >/dev/null; }
	@command -v node >/dev/null && command -v npm >/dev/null \
	  || { echo "installing node and npm (the JavaScript guest tests build with componentize-js)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	@python3 -c 'import venv, ensurepip' 2>/dev/null \
	  || { echo "installing python3-venv (the Python guest tests build with componentize-py)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3 python3-venv >/dev/null; }
	@command -v promtool >/dev/null \
	  || { echo "installing prometheus (promtool checks and unit-tests deploy/prometheus/wraft-alerts.yml)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v jq >/dev/null \
	  || { echo "installing jq (the runbook's tested blocks use it)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq jq >/dev/null; }
	@command -v systemd-analyze >/dev/null \
	  || { echo "installing systemd (systemd-analyze verifies deploy/systemd/wraft.service)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null; }
	@command -v curl >/dev/null \
	  || { echo "installing curl (the HTTP API is tested with it)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq curl >/dev/null; }
	@command -v chromium >/dev/null \
	  || { echo "installing chromium (the web console is tested in a headless browser)"; \
	       SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	       $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest

## The main job.
demo: deps
	$(CARGO) run -p wraft -- demo

## The whole test suite: unit, integration, end-to-end and doc tests.
test: deps
	WRAFT_REQUIRE_BROWSER=1 $(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc
	$(MAKE) fuzz-smoke

## Fuzz targets: replay the committed corpus on stable, then build every
## cargo-fuzz target and run each for FUZZ_SMOKE_SECS (default 10) seconds.
## See fuzz/README.md for the long run.
fuzz-smoke:
	$(CARGO) test --manifest-path fuzz/Cargo.toml -p wraft-fuzz-harness
	fuzz/smoke.sh

## Lints that must stay clean (not part of `make test`; run before committing).
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
