package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParseFlagUsage(t *testing.T) {
	text := "Usage of up:\n" +
		"  -config string\n    \tthe peering's config file (default \"/etc/clusterpeer/peering.yaml\")\n" +
		"  -json\n    \tprint JSON\n" +
		"  -q\tquiet, on one line\n" +
		"  -queues int\n    \tTUN queues, each read\n    \tby a loop of its own\n"
	got := parseFlagUsage(text)
	want := []flagDoc{
		{"config", "string", `the peering's config file (default "/etc/clusterpeer/peering.yaml")`},
		{"json", "", "print JSON"},
		{"q", "", "quiet, on one line"},
		{"queues", "int", "TUN queues, each read by a loop of its own"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d flags %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("flag %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if f := parseFlagUsage("genkey takes no arguments\n"); len(f) != 0 {
		t.Errorf("a command without flags: got %+v", f)
	}
}

func TestNewLogger(t *testing.T) {
	var b bytes.Buffer
	log, err := NewLogger(&b, "info", "json", "demux-a")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hidden")
	log.Info("lane down", "lane", 2)
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil {
		t.Fatalf("json log line %q: %v", b.String(), err)
	}
	if rec["msg"] != "lane down" || rec["node"] != "demux-a" || rec["lane"] != 2.0 || rec["level"] != "INFO" {
		t.Errorf("json record %v", rec)
	}
	b.Reset()
	log, _ = NewLogger(&b, "debug", "text", "gw-a1")
	log.Debug("x", "k", "v w")
	if got := b.String(); !strings.Contains(got, `level=DEBUG msg=x node=gw-a1 k="v w"`) {
		t.Errorf("text log line %q", got)
	}
	for _, bad := range [][2]string{{"loud", "text"}, {"info", "xml"}} {
		if _, err := NewLogger(&b, bad[0], bad[1], "n"); err == nil || !strings.Contains(err.Error(), "want") {
			t.Errorf("level %q format %q: got %v, want an error saying what is allowed", bad[0], bad[1], err)
		}
	}
}

func TestBuildInfo(t *testing.T) {
	b := BuildOf()
	if b.Version == "" || b.Revision == "" || !strings.HasPrefix(b.Go, "go") {
		t.Fatalf("BuildOf() = %+v: every field must say something", b)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(BuildInfo("demux"))
	want := `# HELP clusterpeer_build_info A metric with a constant '1' value labelled by the binary, its version, commit and Go version.
# TYPE clusterpeer_build_info gauge
clusterpeer_build_info{binary="demux",goversion="` + b.Go + `",revision="` + b.Revision + `",version="` + b.Version + `"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestManPageEscapes(t *testing.T) {
	cmds := map[string]Command{"up": {Usage: "up --config FILE", Help: ".starts with a dot, has a \\"}}
	page := manPage("demux", "spread traffic", "1.0", []string{"up"}, cmds, map[string][]flagDoc{"up": {{"config", "string", "the file"}}})
	for _, want := range []string{".TH DEMUX 8", `.SS "demux up \-\-config FILE"`, `\&.starts with a dot, has a \e.`, ".B \\-\\-config \\fIstring\\fR\nthe file\n", ".BR tunnel (8)"} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q:\n%s", want, page)
		}
	}
}

func TestNeedsCaps(t *testing.T) {
	perm := fmt.Errorf("create tun cp0: %w", syscall.EPERM)
	onlyAdmin := func() (uint64, error) { return 1 << unix.CAP_NET_ADMIN, nil }
	err := needsCaps(perm, onlyAdmin, unix.CAP_BPF, unix.CAP_NET_ADMIN)
	if !errors.Is(err, syscall.EPERM) {
		t.Errorf("%v: the cause is lost", err)
	}
	for _, want := range []string{"create tun cp0: operation not permitted", "needs CAP_BPF and CAP_NET_ADMIN", "lacks CAP_BPF (uid", "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if err := needsCaps(perm, onlyAdmin, unix.CAP_NET_ADMIN); !strings.Contains(err.Error(), "holds CAP_NET_ADMIN, so a security policy") {
		t.Errorf("held and refused: %v", err)
	}
	other := errors.New("no such device")
	if err := needsCaps(other, onlyAdmin, unix.CAP_NET_ADMIN); err != other {
		t.Errorf("another error changed: %v", err)
	}
	if needsCaps(nil, onlyAdmin, unix.CAP_NET_ADMIN) != nil {
		t.Error("nil became an error")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	denied := fmt.Errorf("tun queue 0: %w", &fs.PathError{Op: "open", Path: dir, Err: syscall.EACCES})
	if err := needsCaps(denied, onlyAdmin, unix.CAP_NET_ADMIN); !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), dir+" (mode 0755, owner uid") {
		t.Errorf("a file's mode refused: %v", err)
	}
	if _, err := effectiveCaps(); err != nil {
		t.Errorf("effectiveCaps: %v", err)
	}
}

func TestArgsAmongFlags(t *testing.T) {
	var rest []string
	f := NodeFlags{Args: &rest}
	if err := f.Parse("which", []string{"10.1.0.5", "--node", "demux-a", "10.2.0.9", "tcp", "--config", "p.yaml", "1", "2"}, false); err != nil {
		t.Fatal(err)
	}
	if f.Node != "demux-a" || f.Config != "p.yaml" || strings.Join(rest, " ") != "10.1.0.5 10.2.0.9 tcp 1 2" {
		t.Errorf("node %q config %q args %q", f.Node, f.Config, rest)
	}
	var g NodeFlags
	if err := g.Parse("show", []string{"--node", "x", "extra"}, false); err == nil {
		t.Error("a command without arguments took one")
	}
}
