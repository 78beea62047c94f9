# Thin wrapper: `make run` builds and runs the main job, `make test` builds
# and runs every test. Both install missing Debian packages first (as root)
# or print the exact command to do so.
BUILD ?= build
SANITIZE ?=
CMAKE_FLAGS ?=
# Development builds treat warnings as errors (a plain cmake build does not).
WERROR ?= ON
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MAKEFLAGS += --no-print-directory

.PHONY: all deps configure build run test bench install clean

all: build

deps:
	@scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMC_SANITIZE=$(SANITIZE) -DMC_WERROR=$(WERROR) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@scripts/main-job.sh $(BUILD)

# LeakSanitizer's exit-time scan of dynamic TLS reads stale blocks of the
# MSL kernels' C++ libraries and crashes about one run in six; without the
# TLS roots it can only report more, never miss a leak (what other
# libraries keep per thread is suppressed in tests/lsan.supp).
ifneq ($(findstring address,$(SANITIZE)),)
TEST_ENV = LSAN_OPTIONS=$${LSAN_OPTIONS:-use_tls=0:print_suppressions=0:suppressions=$(CURDIR)/tests/lsan.supp}
endif

test: build
	@cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure -j $(JOBS) --timeout 300
	@# The Python package (docs/PYTHON.md); its library is pip's own build, so
	@# not again under the sanitizers.
	@if [ -z "$(SANITIZE)" ]; then python/run-tests.sh $(BUILD); fi

bench: build
	@$(BUILD)/metal-compute bench

install: build
	@cmake --install $(BUILD)

clean:
	@rm -rf build build-*
