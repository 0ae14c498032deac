#!/usr/bin/env bash
# make ops-check: whether clusterpeer installs and runs as a service should
# (issue 20), in one line; exits non-zero on any problem. Root: the
# non-root peering, the package install and the live scrapes run in
# namespaces. Each field comes from a test or a tool that can fail:
#   units             deploy's TestUnits (systemd-analyze verify, hardening lines)
#   nonroot           TestNonRoot: a peering as a user with the units' capabilities
#   deb               TestPackage: built, installed into a throwaway root, used, purged
#   lintian_errors    lintian's errors on the package
#   promtool_problems promtool check metrics on live scrapes (TestOperationsMetrics)
#   rules_tests       promtool test rules on deploy/prometheus
#   dashboard         TestDashboard, and TestOperationsMetrics: every query names a live metric
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

passed() { grep -q -- "^--- PASS: $1 " "$2" && echo ok || echo fail; }

$GO test -count=1 -v -run 'TestUnits|TestDashboard|TestAlertRules' ./deploy >"$log/deploy" 2>&1
$GO test -count=1 -v -timeout 15m -run '^(TestNonRoot|TestPackage|TestOperationsMetrics)$' ./dataplane/e2e >"$log/e2e" 2>&1

deb=$(LINTIAN=off scripts/package.sh 2>"$log/package")
if [ -n "$deb" ] && [ -f "$deb" ]; then
  lintian "$deb" >"$log/lintian" 2>&1
  lintian_errors=$(grep -c '^E: ' "$log/lintian")
  rm -f "$deb"
else
  lintian_errors=fail
fi
promtool_problems=$(grep -o 'promtool_problems=[0-9]*' "$log/e2e" | head -1 | cut -d= -f2)
(cd deploy/prometheus && promtool test rules clusterpeer-alerts_test.yaml) >"$log/rules" 2>&1 && rules=ok || rules=fail
dashboard=fail
[ "$(passed TestDashboard "$log/deploy")" = ok ] && [ "$(passed TestOperationsMetrics "$log/e2e")" = ok ] && dashboard=ok

line="ops: units=$(passed TestUnits "$log/deploy") nonroot=$(passed TestNonRoot "$log/e2e") deb=$(passed TestPackage "$log/e2e") lintian_errors=$lintian_errors promtool_problems=${promtool_problems:-fail} rules_tests=$rules dashboard=$dashboard"
if [[ $line == *fail* ]] || [ "$lintian_errors" != 0 ] || [ "${promtool_problems:-1}" != 0 ]; then
  for f in deploy e2e package lintian rules; do
    [ -s "$log/$f" ] && { echo "--- $f (last lines)"; tail -n 25 "$log/$f"; }
  done >&2
  echo "$line"
  exit 1
fi
echo "$line"
