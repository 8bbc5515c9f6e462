# The interface of the local stack. See README.md.
.PHONY: up down reset demo test bench status lint browser

# Start PostgreSQL and the EdgeMesh services in the background (state, logs and pids in .edgemesh/).
up:
	@scripts/stack.sh up

# Stop everything `make up` started.
down:
	@scripts/stack.sh down

# Start from scratch: stop everything and remove the local state (.edgemesh/: the CA, the database, the
# audit spool, the demo identities). Envoy in .venv/ and the build stay.
reset: down
	rm -rf .edgemesh

status:
	@scripts/stack.sh status

# Bring the stack up and show EdgeMesh at work.
demo: up
	@scripts/demo.sh

# Every test: unit, integration (real PostgreSQL, real TLS) and end-to-end (real binaries).
test:
	@scripts/test.sh

# Chromium (Debian's package; needs root) and playwright-core, for the console's browser tests.
browser:
	@scripts/stack.sh browser-install

# Every benchmark against the running stack (started if it is not); the transcript goes to
# .edgemesh/bench/transcript.txt. BENCHMARKS.md reports the figures, by hand.
bench: up
	@scripts/bench.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
