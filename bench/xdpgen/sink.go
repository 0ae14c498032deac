package xdpgen

import (
	"fmt"

	"github.com/clusterpeer/clusterpeer/dataplane/xdp"
)

// AttachGeneveSink attaches the benchmark's stand-in gateway to ifname
// (native mode, kept after this process exits; xdp.DetachPass removes
// it): it strips GENEVE (UDP 6081, no options) so the kernel takes the
// inner packet, as a gateway's decapsulation would, and drops UDP to the
// discard port, the generator's frames, so its XDP drop count is what
// arrived. Linux's geneve module is missing on the bench machines.
func AttachGeneveSink(ifname string) error {
	var objs sinkObjects
	if err := loadSinkObjects(&objs, nil); err != nil {
		return fmt.Errorf("xdpgen: load sink program: %w", err)
	}
	defer objs.Close()
	return xdp.AttachKept(ifname, objs.XdpGeneveSink)
}
