package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// installCheck runs in the throwaway root after `dpkg -i`: what an
// operator does first with the package, each step printing a line the
// test looks for.
const installCheck = `set -eu
echo "user: $(getent passwd clusterpeer | cut -d: -f1,6,7)"
echo "etc: $(stat -c %U:%G:%a /etc/clusterpeer)"
echo "version: $(demux --version)"
ls /etc/systemd/system/*.wants 2>/dev/null | grep clusterpeer && echo "enabled on install" || true
# A peering file from the packaged example, keys made by the package's own tunnel.
cd /etc/clusterpeer
cp /usr/share/doc/clusterpeer/examples/peering.yaml .
chgrp clusterpeer peering.yaml
chmod 640 peering.yaml
# Keys are owner-only (the checker refuses others'), owned by the user the
# nodes run as; root writes and rotates them.
umask 077
openssl rand -hex 16 >hash.key
for n in a1 b1 a2 b2; do
	tunnel genkey >gw-$n.key
	N=$(echo $n | tr ab AB)
	sed -i "s|PUBKEY_$N\b|$(tunnel pubkey <gw-$n.key)|" peering.yaml
done
chown clusterpeer:clusterpeer hash.key gw-*.key
echo "genkey: $(wc -c <gw-a1.key) bytes, mode $(stat -c %a gw-a1.key)"
# The nodes' user reads the config it runs with.
setpriv --reuid=clusterpeer --regid=clusterpeer --init-groups demux check --config /etc/clusterpeer/peering.yaml
setpriv --reuid=clusterpeer --regid=clusterpeer --init-groups tunnel check --config /etc/clusterpeer/peering.yaml
zcat /usr/share/man/man8/demux.8.gz | grep -q '^.SH COMMANDS' && echo "man: demux(8)"
bash -c '. /usr/share/bash-completion/completions/demux; COMP_WORDS=(demux dra); COMP_CWORD=1; _clusterpeer_demux; echo "completion: ${COMPREPLY[*]}"'
for u in demux tunnel keepalived; do
	systemd-analyze verify --man=no /lib/systemd/system/clusterpeer-$u@node-a.service
done
echo "units: verified"
dpkg -P clusterpeer >/dev/null
test ! -e /usr/bin/demux && echo "purged"
`

// TestPackage builds the Debian package (make package's script:
// lintian-checked there), installs it with dpkg into a throwaway root
// (an overlay of this machine's root in a mount namespace of the test's,
// gone when it ends), and there does what an operator does first: the
// user and config directory exist, nothing is enabled, `tunnel genkey`
// makes the keys of a peering file that `demux check` accepts as the
// nodes' user, man page and completion are there, the installed units
// pass systemd-analyze verify, and the package purges.
func TestPackage(t *testing.T) {
	needs(t, "dpkg", "unshare", "chroot", "openssl", "setpriv", "systemd-analyze")
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Skip("needs lintian (make deps installs it)")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "scripts/package.sh")
	build.Dir = root
	build.Env = append(os.Environ(), "VERSION=0.0.0~test", "REVISION=test", "GO="+filepath.Join(runtime.GOROOT(), "bin", "go"))
	var stderr strings.Builder
	build.Stderr = &stderr
	out, err := build.Output()
	if err != nil {
		t.Fatalf("scripts/package.sh: %v\n%s", err, stderr.String())
	}
	deb := filepath.Join(root, strings.TrimSpace(string(out)))
	t.Cleanup(func() { os.Remove(deb) })
	t.Logf("built %s; lintian: %s", filepath.Base(deb), strings.Join(lintianLines(stderr.String()), "; "))

	dir := t.TempDir()
	setup := `set -eu
r=$1
mount -t tmpfs tmpfs "$r"
mkdir "$r/upper" "$r/work" "$r/merged"
mount -t overlay overlay -o lowerdir=/,upperdir="$r/upper",workdir="$r/work" "$r/merged"
mount --rbind /dev "$r/merged/dev"
mount -t proc proc "$r/merged/proc"
mount -t tmpfs tmpfs "$r/merged/run"
cp "$2" "$r/merged/tmp/clusterpeer.deb"
chroot "$r/merged" dpkg -i /tmp/clusterpeer.deb >/dev/null
exec chroot "$r/merged" bash -c "$3"`
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "bash", "-c", setup, "setup", dir, deb, installCheck)
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install into a throwaway root: %v\n%s", err, got)
	}
	t.Logf("%s", got)
	for _, want := range []string{
		"user: clusterpeer:/nonexistent:/usr/sbin/nologin", "etc: root:clusterpeer:750", "version: demux 0.0.0~test (commit test",
		"genkey: 45 bytes, mode 600", ": peering \"example\", 2 lanes", "man: demux(8)", "completion: drain", "units: verified", "purged",
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("the installed package: no %q", want)
		}
	}
	if strings.Contains(string(got), "enabled on install") {
		t.Error("installing the package enabled a unit")
	}
	if _, err := os.Stat("/usr/bin/demux"); err == nil {
		t.Error("the install reached this machine's root")
	}
}

// lintianLines are lintian's tags in package.sh's output.
func lintianLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if len(l) > 3 && l[1] == ':' && strings.Contains("EWIPX", l[:1]) {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return []string{"no tags"}
	}
	return out
}
