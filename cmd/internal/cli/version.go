package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// version and revision are set by `make build` and `make package`
// (-ldflags "-X github.com/clusterpeer/clusterpeer/cmd/internal/cli.version=..."),
// which know the release and the commit even where Go's own stamping is
// off (-buildvcs=false); a plain go build says "devel" and, outside git,
// "unknown".
var version, revision = "", ""

// Build says what a binary was built from.
type Build struct {
	Version  string `json:"version"`  // release, or "devel"
	Revision string `json:"revision"` // git commit, "+dirty" if the tree had changes
	Go       string `json:"go"`
}

// BuildOf is this binary's Build: the release the package build set, and
// the commit Go's build stamped in (go build in a git checkout does).
func BuildOf() Build {
	b := Build{Version: version, Revision: revision, Go: runtime.Version()}
	if b.Revision == "" {
		b.Revision = "unknown"
	}
	info, ok := debug.ReadBuildInfo()
	if b.Version == "" {
		b.Version = "devel"
		if ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
	}
	if !ok || revision != "" {
		return b
	}
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
			if len(b.Revision) > 12 {
				b.Revision = b.Revision[:12]
			}
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && b.Revision != "unknown" {
		b.Revision += "+dirty"
	}
	return b
}

func (b Build) String() string {
	return fmt.Sprintf("%s (commit %s, %s)", b.Version, b.Revision, b.Go)
}

// KeysExpiry is the clusterpeer_keys_expiry_timestamp_seconds gauge: when
// the node's last key generation stops being accepted (security.keys_dir,
// `demux keys --grace`), 0 while one has no end. An alert fires on it
// well before the node has no key left to sign its probes or frames with.
func KeysExpiry(until func() time.Time) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clusterpeer_keys_expiry_timestamp_seconds",
		Help: "When the node's last key generation stops being accepted, in seconds since the epoch; 0 while one has no end.",
	}, func() float64 {
		t := until()
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	})
}

// BuildInfo is the clusterpeer_build_info gauge: 1, labelled with what
// the binary was built from, as Prometheus' own build_info is, so a
// dashboard or an alert can join on the version a node runs.
func BuildInfo(binary string) prometheus.Collector {
	b := BuildOf()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "clusterpeer_build_info",
		Help:        "A metric with a constant '1' value labelled by the binary, its version, commit and Go version.",
		ConstLabels: prometheus.Labels{"binary": binary, "version": b.Version, "revision": b.Revision, "goversion": b.Go},
	})
	g.Set(1)
	return g
}
