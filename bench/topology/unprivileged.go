package topology

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/config"
)

// Unprivileged is a user the nodes run as (Options.RunAs): not root, and
// holding only what deploy/systemd's units grant (UnitCaps). As under those units, the
// user owns the nodes' files and its status socket directory, and
// nothing else: no file capabilities, no new privileges, an empty
// bounding set beyond those.
type Unprivileged struct {
	UID, GID int
}

// statusDir holds a RunAs peering's status sockets, owned by its user
// (as the units' RuntimeDirectory is).
func statusDir(prefix string) string { return filepath.Join(config.DefaultStatusDir, prefix) }

// tunNode is a /dev/net/tun of mode 0666, bound over the real one in
// each node's mount namespace: udev makes it so on a Debian host, this
// machine has none (its node is root's alone).
func tunNode(work string) string { return filepath.Join(work, "dev-net-tun") }

// unprivileged gives the user the peering's files and a status socket
// directory, and makes the tun node.
func (p *Peering) unprivileged() error {
	u := p.RunAs
	if u.UID == 0 {
		return fmt.Errorf("run as: uid 0 is root")
	}
	dir := statusDir(p.Options.Prefix)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := os.Chown(dir, u.UID, u.GID); err != nil {
		return err
	}
	dev := tunNode(p.Work)
	os.Remove(dev)
	if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		return fmt.Errorf("run as: mknod %s: %w", dev, err)
	}
	if err := os.Chmod(dev, 0o666); err != nil { // past the umask
		return err
	}
	// The nodes read their config and keys from Work, which must be
	// reachable by the user (its parents at least searchable).
	return filepath.WalkDir(p.Work, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, u.UID, u.GID)
	})
}

// UnitCaps are the capabilities deploy/systemd's unit grants binary
// (setpriv's names): CAP_NET_ADMIN and CAP_NET_RAW (the ICMP socket of
// the failure signals), and for a demux with XDP, CAP_BPF and CAP_PERFMON.
func UnitCaps(binary string, xdp bool) []string {
	if binary == "demux" && xdp {
		return []string{"net_admin", "net_raw", "bpf", "perfmon"}
	}
	return []string{"net_admin", "net_raw"}
}

// Wrap runs args as the user holding caps alone (run in a namespace by
// `ip netns exec`): the peering's tun node bound over /dev/net/tun in the
// mount namespace ip made for it, then setpriv down to the user.
func (u *Unprivileged) Wrap(work string, caps []string, args []string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	script := `mount --bind "$0" /dev/net/tun && exec setpriv --reuid="$1" --regid="$2" --clear-groups ` +
		`--inh-caps=` + set + ` --ambient-caps=` + set + ` --bounding-set=` + set + ` --no-new-privs -- "${@:3}"`
	return append([]string{"bash", "-c", script, tunNode(work), strconv.Itoa(u.UID), strconv.Itoa(u.GID)}, args...)
}
