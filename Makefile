# clusterpeer: see README.md. `make test` is what CI runs.
GO       ?= go
FUZZTIME ?= 60s
RUNS     ?= 5
SECONDS  ?= 5
FAILOVER_RUNS ?= 10
MEMBERSHIP_RUNS ?= 5
SOAK_DURATION ?= 10m
SOAK_FLOWS ?= 100000
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: test deps check build package ops-check soak demo compare failover membership hostile fuzz microbench vectors generate bench-xdp bench-xdp-quick bench bench-quick bench-tools

# Installs missing Debian packages, checks formatting and vet, then runs
# every test (root-only tests skip without root) with the race detector,
# and, as root, the quick runs of the benchmark harness and of bench-xdp.
# The namespace tests (dataplane/e2e) run after the rest, alone: their
# failover scenarios judge lanes on 200 ms of probe silence, and beside
# flowhash's race-mode tests (both cores busy for minutes) the demuxes
# and gateways stalled for 220-380 ms and lanes went down falsely.
test: deps check
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/dataplane/e2e$$')
	$(GO) test -race -count=1 -timeout 20m ./dataplane/e2e
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory bench-quick bench-xdp-quick; \
	  else echo "bench-quick, bench-xdp-quick: skipped, need root (namespaces, cgroups, tc, XDP)"; fi

deps:
	@scripts/install-deps.sh

# The binaries, into bin/, stamped with the version and commit they print
# (--version, show, clusterpeer_build_info).
# Before the first release tag, the version is 0.1.0~git<commit date>.<commit>
# (a Debian version: it sorts before 0.1.0 and by date).
VERSION  ?= $(shell git describe --tags --match 'v[0-9]*' 2>/dev/null | sed 's/^v//' | grep . || git log -1 --format=0.1.0~git%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0.1.0)
REVISION ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo +dirty)
LDFLAGS  := -X github.com/clusterpeer/clusterpeer/cmd/internal/cli.version=$(VERSION) -X github.com/clusterpeer/clusterpeer/cmd/internal/cli.revision=$(REVISION)
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

# The Debian package, build/clusterpeer_VERSION_ARCH.deb (deploy/nfpm.yaml,
# scripts/package.sh): binaries, systemd units, man pages, completions,
# the example config, dashboard and alerting rules; lintian-checked.
package: deps
	@VERSION='$(VERSION)' REVISION='$(REVISION)' GO='$(GO)' scripts/package.sh

# A peering for 10 minutes under 100,000 concurrent flows that come and
# go, lanes drained and restored, every node reloaded; each process's
# memory, goroutines and descriptors sampled (root). Ends with
# soak: minutes=... flows=... rss_growth_pct=... goroutine_growth=... fd_growth=... lost=...
# and fails if anything grew after warm-up or a packet was lost.
soak: deps build
	bin/bench soak --duration $(SOAK_DURATION) --flows $(SOAK_FLOWS)

# One line on whether it installs and runs as a service should: units,
# non-root peering, package, lintian, promtool, alert rules, dashboard
# (root; about 2 minutes). Exits non-zero on any problem.
ops-check: deps
	@VERSION='$(VERSION)' REVISION='$(REVISION)' GO='$(GO)' scripts/ops-check.sh

# Two networks, a demux each and three lanes in namespaces, iperf3 across
# (root; removes everything it made when it ends, also on Ctrl-C).
demo: deps build
	@scripts/demo.sh

check:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './vendor/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v clang >/dev/null && [ -f /usr/include/bpf/bpf_helpers.h ]; then \
	  $(GO) generate ./dataplane/xdp ./bench/xdpgen && git diff --exit-code --stat -- dataplane/xdp bench/xdpgen \
	  || { echo "the committed XDP objects differ from what clang builds: run make generate and commit"; exit 1; }; \
	else echo "check: clang or libbpf-dev absent; not checking that the XDP objects regenerate unchanged"; fi

# Rebuilds the XDP programs (dataplane/xdp/*.c, bench/xdpgen/gen.c) into
# the committed .o and .go files; needs clang and libbpf-dev.
generate:
	$(GO) generate ./dataplane/xdp ./bench/xdpgen

# The benchmark harness (cmd/bench, docs/bench.md): lanes 1-6 x every
# profile in bench/profiles.yaml, TCP and UDP, 3 runs of 5 s each, beside
# the kernel and wireguard-go baselines; writes bench/results/ (root;
# 25 minutes on a 2-CPU machine).
bench: deps build bench-tools
	bin/bench run --out bench/results

# The harness end to end in about a minute: 1 and 2 lanes, one profile,
# 2 runs of 2 s; checks that every figure is there and positive (no
# performance threshold) and that this run left no namespace or cgroup
# (ones that were there before, e.g. from a killed run, are not its own).
# CI runs it as part of make test.
bench-quick: deps build bench-tools
	@out=$$(mktemp -d); trap 'rm -rf $$out' EXIT; \
	  ours() { ip netns list | awk '/^cpb[0-9]+-/{print $$1}'; ls -d /sys/fs/cgroup/*/clusterpeer-bench-* /sys/fs/cgroup/clusterpeer-bench-* 2>/dev/null; true; }; \
	  ours | sort > $$out/before; \
	  bin/bench run --profile c4.large --lanes 1,2 --duration 2s --reps 2 --streams 4 --out $$out && \
	  bin/bench check $$out/report.json && \
	  left=$$(ours | sort | comm -13 $$out/before -); \
	  if [ -n "$$left" ]; then echo "bench-quick: left behind:"; echo "$$left"; exit 1; fi; \
	  echo "bench-quick: no namespace or cgroup left behind"

# Upstream wireguard-go for the baseline, built from the module proxy at
# the version go.mod pins (the one our lanes embed).
bench-tools:
	$(GO) build -o bin/wireguard-go golang.zx2c4.com/wireguard

# The demux's forwarding paths in one run: XDP, userspace, kernel
# ip_forward; UDP from bench blast, TCP from iperf3, through namespaces;
# a path that drops at the generator's full rate swept over lower ones
# (root; about 6 minutes).
bench-xdp: deps build
	@bin/bench xdp --duration $(SECONDS)s --runs 3

# bench-xdp once, 2 s per figure: every path and size gives a figure (no
# performance threshold) and the run leaves no namespace. Part of make test.
bench-xdp-quick: deps build
	@out=$$(mktemp -d); trap 'rm -rf $$out' EXIT; \
	  ours() { ip netns list | awk '/^cpbx[0-9]+-/{print $$1}' | sort; }; \
	  ours > $$out/before; \
	  bin/bench xdp --duration 2s --runs 1 > $$out/log 2>&1; rc=$$?; \
	  cat $$out/log; [ $$rc = 0 ] || exit $$rc; \
	  left=$$(ours | comm -13 $$out/before -); \
	  if [ -n "$$left" ]; then echo "bench-xdp-quick: left behind:"; echo "$$left"; exit 1; fi; \
	  echo "bench-xdp-quick: no namespace left behind"

# iperf3 single stream through demux + 1 lane vs plain upstream
# wireguard-go, alternating in one run (root).
compare: deps build bench-tools
	@scripts/lane-vs-wgo.sh $(RUNS) $(SECONDS)

# Chaos scenarios (kill a gateway on either side, pull an underlay link,
# a lane coming back, a lane added and one drained, live) FAILOVER_RUNS
# times each under UDP flows and TCP streams; ends with one summary line
# per scenario (root; about 6 minutes at 10 runs).
failover: deps
	@out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	  $(GO) test ./dataplane/e2e -run '^(TestFailover|TestDemuxHA)$$' -count=1 -v -timeout 30m -args -failover.runs=$(FAILOVER_RUNS) >$$out 2>&1; rc=$$?; \
	  grep -E '(failover_test.go:[0-9]+: run|^--- |^    --- |^(ok|FAIL))' $$out; \
	  [ $$rc = 0 ] || { echo "failover: FAILED; full output:"; cat $$out; }; \
	  echo; grep '^failover: ' $$out; exit $$rc

# Lane membership through etcd (root): a gateway replaced by a new instance
# (new key, new addresses), two lanes added by starting their gateways, a
# gateway gone for good, the etcd cluster down for 10 s, one member of
# three down; MEMBERSHIP_RUNS times each under UDP flows, fresh 5-tuples
# and TCP streams; ends with one summary line per scenario (about 5 min).
membership: deps
	@out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	  $(GO) test ./dataplane/e2e -run '^TestMembership$$' -count=1 -v -timeout 30m -args -membership.runs=$(MEMBERSHIP_RUNS) >$$out 2>&1; rc=$$?; \
	  grep -E '(membership_test.go:[0-9]+: |^--- |^    --- |^(ok|FAIL))' $$out; \
	  [ $$rc = 0 ] || { echo "membership: FAILED; full output:"; cat $$out; }; \
	  echo; grep '^membership: ' $$out; exit $$rc

# A host on a peered network attacks the peering (root): routes via a
# gateway past the demux, forges GENEVE and the demux's address, floods the
# probe ports, forges ICMP errors, sends malformed GENEVE and IP, sprays
# new 5-tuples into a full pin table; under UDP flows, one line per case
# (about 110 s: the userspace demux, then the XDP program in front of it). docs/security.md.
hostile: deps
	@out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	  $(GO) test ./dataplane/e2e -run '^TestHostile$$' -count=1 -v -timeout 10m >$$out 2>&1; rc=$$?; \
	  [ $$rc = 0 ] || { echo "hostile: FAILED; full output:"; cat $$out; }; \
	  grep '^hostile: ' $$out; exit $$rc

# Coverage-guided fuzzing of the packet parsers, FUZZTIME per target; new
# crashers land in <package>/testdata/fuzz and become regression tests.
fuzz:
	$(GO) test ./flowhash -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./flowhash -run '^$$' -fuzz '^FuzzSelect$$' -fuzztime $(FUZZTIME)
	$(GO) test ./dataplane/packet -run '^$$' -fuzz '^FuzzParseGeneve$$' -fuzztime $(FUZZTIME)
	$(GO) test ./dataplane/tunlink -run '^$$' -fuzz '^FuzzHandleRead$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./tunnel/gateway -run '^$$' -fuzz '^FuzzCheck$$' -fuzztime $(FUZZTIME)
	$(GO) test ./tunnel/probe -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./tunnel/probe -run '^$$' -fuzz '^FuzzSignals$$' -fuzztime $(FUZZTIME)
	$(GO) test ./dataplane/icmpwatch -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./bench/iperf -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./bench/profile -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./membership -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME)
	$(GO) test ./dataplane/xdp -run '^$$' -fuzz '^FuzzXDPParity$$' -fuzztime $(FUZZTIME)

# Go micro-benchmarks of the hot path (compare runs with benchstat).
microbench:
	$(GO) test ./flowhash ./dataplane/demux ./dataplane/udpbatch ./dataplane/tunlink ./tunnel/gateway -run '^$$' -bench . -benchtime 1s -count 5

# Regenerates testdata/flowhash-vectors.json and the fuzz seed corpus. Only
# on purpose: a changed hash or table splits demuxes of different versions.
vectors:
	$(GO) test ./flowhash -run '^TestVectors$$' -count=1 -update
