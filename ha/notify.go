package ha

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
)

// keepalived's notify script gets "INSTANCE|GROUP NAME STATE PRIORITY".
var stateRE = regexp.MustCompile(`^[A-Z_]{1,16}$`)

// State takes the new state from keepalived's notify arguments.
func State(args []string) (string, error) {
	if len(args) < 3 || !stateRE.MatchString(args[2]) {
		return "", fmt.Errorf("want keepalived's notify arguments (INSTANCE NAME STATE [PRIORITY]), got %q", args)
	}
	return args[2], nil
}

// HookTimeout bounds the operator's command: keepalived does not wait for
// it, but a hook that hangs for ever would pile up.
const HookTimeout = 2 * time.Minute

// Hook runs networks.SIDE.ha.notify, if set, for a change of node's role
// to state (MASTER, BACKUP, FAULT, STOP): through /bin/sh, with the state
// and the node as arguments ($1, $2) and the rest in its environment, so
// that a script can point a cloud route table at the new active demux.
// It returns the command's combined output.
func Hook(ctx context.Context, p *config.Peering, node, state string) ([]byte, error) {
	n, err := p.Node(node)
	if err != nil {
		return nil, err
	}
	if n.Demux == nil || p.Networks[n.Side].HA == nil {
		return nil, fmt.Errorf("%s is not a demux of an HA pair", node)
	}
	nw := p.Networks[n.Side]
	if nw.HA.Notify == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", nw.HA.Notify+` "$@"`, "clusterpeer-notify", state, node)
	cmd.Env = append(os.Environ(),
		"CLUSTERPEER_PEERING="+p.Name,
		"CLUSTERPEER_SIDE="+string(n.Side),
		"CLUSTERPEER_NODE="+node,
		"CLUSTERPEER_STATE="+state,
		"CLUSTERPEER_ADDRESSES="+Join(n.Demux.Addresses),
		"CLUSTERPEER_VIPS="+Join(nw.HA.VIPs),
		"CLUSTERPEER_REMOTE_PREFIXES="+Join(p.Networks[n.Side.Other()].Prefixes),
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("networks.%s.ha.notify %q (%s): %w", n.Side, nw.HA.Notify, state, err)
	}
	return out, nil
}

// Join lists addresses or prefixes as the hook's variables and the
// status show them: comma-separated.
func Join[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}
