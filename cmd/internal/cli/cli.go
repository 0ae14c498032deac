// Package cli holds what the demux and tunnel commands share: subcommand
// dispatch, the --config/--node flags, slog set-up and the wait for a
// stop signal.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/clusterpeer/clusterpeer/admin"
	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/membership"
)

// Command is one subcommand.
type Command struct {
	Usage string // "up --config FILE --node NAME"
	Help  string
	Run   func(args []string) error
}

// Main dispatches os.Args to a subcommand and exits with its status.
// summary says in a line what prog does (usage, man page). Besides cmds,
// every program answers --version, `completion bash` and `manpage`
// (the package build makes its man page and completion from these).
func Main(prog, summary string, cmds map[string]Command) {
	usage := func() {
		fmt.Fprintf(os.Stderr, "%s: %s\n\nusage: %s <command> [flags]\n\ncommands:\n", prog, summary, prog)
		for _, n := range sortedNames(cmds) {
			fmt.Fprintf(os.Stderr, "  %-44s %s\n", prog+" "+cmds[n].Usage, cmds[n].Help)
		}
		fmt.Fprintf(os.Stderr, "  %-44s %s\n", prog+" --version", "print the version and commit")
	}
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "--version", "-version", "version":
		fmt.Printf("%s %s\n", prog, BuildOf())
		return
	case "completion", "manpage":
		if err := document(os.Args[1], prog, summary, cmds, os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "%s %s: %v\n", prog, os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	c, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "%s: unknown command %q\n\n", prog, os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := c.Run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) { // -h: the flag package printed the flags
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "%s %s: %v\n", prog, os.Args[1], err)
		os.Exit(1)
	}
}

func sortedNames(cmds map[string]Command) []string {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NodeFlags are the flags every node command takes.
type NodeFlags struct {
	Config, Node, LogLevel, LogFormat string
	JSON                              bool
	// Args receives the arguments after the flags, for a command that
	// takes them (nil: such arguments are an error).
	Args *[]string
}

// Parse parses args with the node flags (and --json when withJSON).
func (f *NodeFlags) Parse(name string, args []string, withJSON bool) error {
	return f.ParseWith(name, args, withJSON, nil)
}

// ParseWith is Parse with a command's own flags, which extra defines.
func (f *NodeFlags) ParseWith(name string, args []string, withJSON bool, extra func(*flag.FlagSet)) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	if extra != nil {
		extra(fs)
	}
	fs.StringVar(&f.Config, "config", "/etc/clusterpeer/peering.yaml", "the peering's config file")
	fs.StringVar(&f.Node, "node", "", "this node's name in the config")
	fs.StringVar(&f.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.LogFormat, "log-format", "text", "text (logfmt) or json (one object a line, for a log shipper)")
	if withJSON {
		fs.BoolVar(&f.JSON, "json", false, "print JSON")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if f.Args != nil {
		// Flags may come after the arguments too (demux which SRC DST
		// PROTO --node X), as operators type them.
		var pos []string
		for rest := fs.Args(); len(rest) > 0; rest = fs.Args() {
			pos = append(pos, rest[0])
			if err := fs.Parse(rest[1:]); err != nil {
				return err
			}
		}
		*f.Args = pos
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// Load reads the config and finds the node.
func (f *NodeFlags) Load() (*config.Peering, config.Node, error) {
	if f.Node == "" {
		return nil, config.Node{}, fmt.Errorf("--node is required: the name of this node in %s", f.Config)
	}
	p, err := config.Load(f.Config)
	if err != nil {
		return nil, config.Node{}, err
	}
	n, err := p.Node(f.Node)
	return p, n, err
}

// Logger returns a slog logger on stderr at the flags' level and format.
func (f *NodeFlags) Logger() (*slog.Logger, error) {
	return NewLogger(os.Stderr, f.LogLevel, f.LogFormat, f.Node)
}

// NewLogger is a logger writing to w at level ("debug" ... "error") in
// format ("text" or "json"; "" is text), every record naming node.
func NewLogger(w io.Writer, level, format, node string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	return slog.New(h).With("node", node), nil
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// Check is the `check` subcommand: validate a config, print a summary.
func Check(args []string) error {
	var f NodeFlags
	if err := f.Parse("check", args, false); err != nil {
		return err
	}
	p, err := config.Load(f.Config)
	if err != nil {
		return err
	}
	fmt.Printf("%s: peering %q, %d lanes, mtu %d, vni %d, nodes: %s\n",
		f.Config, p.Name, len(p.Lanes), p.MTU, p.VNI, strings.Join(p.NodeNames(), " "))
	return nil
}

// HumanBytes formats a byte count as `wg show` does.
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// PrintDrops prints the nonzero drop counters on one line.
func PrintDrops(drops map[string]uint64) { PrintCounts("drops", drops) }

// PrintCounts prints the nonzero counters on one line after label.
func PrintCounts(label string, counts map[string]uint64) {
	var names []string
	for k, v := range counts {
		if v > 0 {
			names = append(names, k)
		}
	}
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	fmt.Printf("  %s:", label)
	for _, k := range names {
		fmt.Printf(" %s=%d", k, counts[k])
	}
	fmt.Println()
}

// Show is the common part of the `show` subcommands: it finds the node,
// asks socket for its status socket (an error if the node is of the other
// kind), reads the status into v and, with --json, prints it. It reports
// whether the caller still has to print v as text.
func Show(args []string, socket func(config.Node) (string, error), v any) (text bool, err error) {
	var f NodeFlags
	if err := f.Parse("show", args, true); err != nil {
		return false, err
	}
	_, node, err := f.LoadAny()
	if err != nil {
		return false, err
	}
	path, err := socket(node)
	if err != nil {
		return false, fmt.Errorf("node %q: %w", f.Node, err)
	}
	if err := admin.Fetch(path, v); err != nil {
		return false, err
	}
	if f.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return false, enc.Encode(v)
	}
	return true, nil
}

// Up is the common start of the `up` subcommands: flags, logger, config,
// and the node, which must be a demux (wantDemux) or a gateway.
func Up(args []string, wantDemux bool) (*slog.Logger, *config.Peering, config.Node, error) {
	return UpWith(args, wantDemux, nil)
}

// UpWith is Up with the command's own flags added.
func UpWith(args []string, wantDemux bool, extra func(*flag.FlagSet)) (*slog.Logger, *config.Peering, config.Node, error) {
	var f NodeFlags
	if err := f.ParseWith("up", args, false, extra); err != nil {
		return nil, nil, config.Node{}, err
	}
	log, err := f.Logger()
	if err != nil {
		return nil, nil, config.Node{}, err
	}
	p, node, err := f.Load()
	if err != nil {
		return nil, nil, config.Node{}, err
	}
	if wantDemux && node.Demux == nil {
		return nil, nil, node, fmt.Errorf("node %q is a gateway; run it with `tunnel up`", f.Node)
	}
	if !wantDemux && node.Lane == nil {
		return nil, nil, node, fmt.Errorf("node %q is a demux; run it with `demux up`", f.Node)
	}
	return log, p, node, nil
}

// LoadAny is Load, and for a node in no file of a peering with etcd
// discovery, a gateway that joined through the store: its status socket
// has the default name (tunnel join --status otherwise).
func (f *NodeFlags) LoadAny() (*config.Peering, config.Node, error) {
	p, node, err := f.Load()
	if errors.Is(err, config.ErrUnknownNode) && p != nil && p.Discovery.Mode == config.DiscoveryEtcd {
		g := &config.Gateway{Status: config.DefaultStatusDir + "/" + p.Name + "-" + f.Node + ".sock"}
		return p, config.Node{Lane: &config.Lane{}, Self: g, Peer: &config.Gateway{}}, nil
	}
	return p, node, err
}

// Members is `demux members` and `tunnel members`: the store's
// registrations, each verified as the demuxes verify them.
func Members(args []string) error {
	var f NodeFlags
	if err := f.Parse("members", args, true); err != nil {
		return err
	}
	p, err := config.Load(f.Config)
	if err != nil {
		return err
	}
	s, err := membership.Dial(p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), p.Discovery.Etcd.DialTimeout+3*time.Second)
	defer cancel()
	ls, err := s.List(ctx, p)
	if err != nil {
		return fmt.Errorf("etcd %v: %w", p.Discovery.Etcd.Endpoints, err)
	}
	if f.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ls)
	}
	fmt.Printf("store: %s (prefix %s)\n", strings.Join(p.Discovery.Etcd.Endpoints, ", "), s.Keys().Gateways())
	if len(ls) == 0 {
		fmt.Println("  no registrations")
	}
	for _, l := range ls {
		if l.Record == nil {
			fmt.Printf("\n%s: REFUSED (%s)\n", l.Key, l.Refused)
			continue
		}
		r := l.Record
		fmt.Printf("\nside %s slot %d: %s (%s)\n", r.Side, r.Slot, r.Name, r.State)
		fmt.Printf("  public key: %s\n  endpoint: %s  geneve: %s  weight: %d\n", r.PublicKey, r.Endpoint, r.Geneve, r.Weight)
		fmt.Printf("  registered: %s  lease: %x, %s left\n", r.Issued.Format(time.RFC3339), r.Lease, l.TTL)
	}
	return nil
}
