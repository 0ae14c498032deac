package ha

import (
	"fmt"

	"github.com/clusterpeer/clusterpeer/dataplane/demux"
)

// Healthy judges whether a demux may hold the VIPs, from its status and
// whether its TUN is up: it must be able to take the hosts' packets and
// send them somewhere. It returns what an operator reads in keepalived's
// log either way.
func Healthy(st demux.Status, tunUp bool) (string, error) {
	if !tunUp {
		return "", fmt.Errorf("%s: tun %s is not up: the hosts' packets would go nowhere", st.Node, st.Tun)
	}
	up := 0
	for _, l := range st.Lanes {
		if l.State == "up" {
			up++
		}
	}
	if up == 0 {
		return "", fmt.Errorf("%s: no lane up (%d configured): the standby may still reach some", st.Node, len(st.Lanes))
	}
	return fmt.Sprintf("%s: healthy, %d of %d lanes up", st.Node, up, len(st.Lanes)), nil
}
