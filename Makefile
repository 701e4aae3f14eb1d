# Roomcast: `make run` to try it, `make test` to check it. Both install what is missing.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help deps run stop test test-only test-cluster test-soak soak sdk-test demo-sdk lint k8s-check contract-test bench chaos mutants mutants-lua fmt build release stop-redis clean-run

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: ## install redis-server, redis-cli and promtool when missing
	@scripts/install-deps.sh --test

run: ## start a local Redis (AOF) and one gateway with a dev config, print how to connect (LISTEN=0.0.0.0:8080 for the LAN)
	@scripts/install-deps.sh
	@scripts/dev-run.sh

test: deps lint test-only sdk-test contract-test k8s-check ## install what is missing, lint, run every test, validate manifests

# A bound on each test command (its build included), so that a test that hangs fails the
# run with the names libtest printed ("has been running for over 60 seconds") instead of
# outliving it. The first (a fresh build included) is most of a fresh clone's CI time.
TEST_TIMEOUT ?= 40m

test-only: ## run every test (each starts its own private Redis instances), the multi-instance suites against a Redis Cluster, a 2-minute soak
	timeout -k 30s $(TEST_TIMEOUT) $(CARGO) test --workspace --all-targets
	$(MAKE) test-cluster
	$(MAKE) test-soak

# The short soak and the contract test run the xtask binary that `cargo test --workspace`
# built (xtask/tests needs it) with the test run's features: `cargo xtask` would build it
# apart, and with it everything below it again.
test-soak: ## the short form of make soak: 2 minutes at small scale on the debug build; fails on loss, leaks left after the run, keys without a TTL
	test -x target/debug/xtask || $(CARGO) build -q -p roomcast-xtask
	SOAK_PROFILE=debug SOAK_MINUTES=2 SOAK_WARMUP=40 SOAK_SESSIONS=20 SOAK_DISPLAYS=5 SOAK_RATE=10 \
	  SOAK_MAX_GROWTH=25 SOAK_OUT=.run/soak-short target/debug/xtask soak

test-cluster: ## the multi-instance suites again, each test against its own private 3-primary Redis Cluster
	# --workspace keeps the features (and so the build) of the full test run: no rebuild.
	ROOMCAST_TEST_REDIS=cluster timeout -k 30s $(TEST_TIMEOUT) $(CARGO) test --workspace --lib
	ROOMCAST_TEST_REDIS=cluster timeout -k 30s $(TEST_TIMEOUT) $(CARGO) test --workspace --test it -- protocol:: rest:: lifecycle:: limits:: \
	  recovery::a_message_pubsub_dropped recovery::readiness_follows webhooks::

sdk-test: ## the TypeScript SDK (clients/js): its build and tests against real gateways and Redis
	scripts/sdk-test.sh

demo-sdk: ## rebuild the SDK and copy its modules into the demo (gateway/demo/sdk)
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build
	cp clients/js/dist/{index,client,session,emitter,errors,backoff,codec,protocol}.js gateway/demo/sdk/

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

contract-test: ## schemathesis against the served OpenAPI document (private Redis and gateway)
	$(CARGO) build -q -p roomcast-gateway
	test -x target/debug/xtask || $(CARGO) build -q -p roomcast-xtask
	target/debug/xtask contract

k8s-check: ## render k8s/ with kustomize and validate it offline; promtool on alerts; hadolint
	scripts/k8s-check.sh

bench: ## benchmark scenarios (BENCHMARKS.md), results in bench/; SCENARIOS="fanout idle ..." picks some
	scripts/install-deps.sh --test >/dev/null
	# The open-files limit the idle, storm, broadcast and silent scenarios need (20,000 is
	# this machine's hard cap), for the driver and every process it starts.
	ulimit -n 20000 2>/dev/null || true; $(CARGO) xtask bench $(SCENARIOS)

chaos: ## fault scenarios under load (BENCHMARKS.md, Reliability), reports in bench/chaos/; SCENARIOS="kill pubsub ..." picks some
	scripts/install-deps.sh --test >/dev/null
	$(CARGO) xtask chaos $(SCENARIOS)

soak: ## 10 minutes at half capacity with churn: RSS, fds, tasks, pumps, Redis keys and memory every 10 s (BENCHMARKS.md, Reliability), in bench/soak/
	scripts/install-deps.sh --test >/dev/null
	$(CARGO) xtask soak

mutants: ## mutation testing (TESTING.md): the code changed since origin/main; GROUP=delivery|limits|health|auth|store|lua|all, SHARD=k/n
	scripts/mutants.sh

mutants-lua: ## the Lua mutants only (scripts/lua-mutants.py --list shows them)
	scripts/install-deps.sh --test
	scripts/lua-mutants.py

fmt: ## format the code
	$(CARGO) fmt --all

build: ## debug build
	$(CARGO) build --workspace

release: ## optimised build of the roomcast binary
	$(CARGO) build --release -p roomcast-gateway

stop: ## stop the gateway and the Redis that `make run` started (by pid)
	@scripts/stop-pid.sh .run/gateway.pid gateway
	@scripts/stop-pid.sh .run/redis.pid Redis

stop-redis: ## stop the Redis that `make run` started
	@scripts/stop-pid.sh .run/redis.pid Redis

clean-run: stop-redis ## remove .run/
	rm -rf .run
