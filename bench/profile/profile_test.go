package profile

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestShippedFileLoads(t *testing.T) {
	f, err := Load("../profiles.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range f.Profiles {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, " "); got != "c4.large c4.xlarge c4.2xlarge c4.4xlarge c4.8xlarge" {
		t.Errorf("profiles = %s", got)
	}
	if f.VPC.OneWayGbps != 5 || f.VPC.BothWaysGbps != 10 {
		t.Errorf("vpc = %+v, want the seed's 5 and 10 Gbit/s", f.VPC)
	}
	if f.Host.CPUPeriod != 10*time.Millisecond {
		t.Errorf("cpu_period = %v", f.Host.CPUPeriod)
	}
}

func TestBrokenFiles(t *testing.T) {
	base := `
vpc: {one_way_gbps: 5, both_ways_gbps: 10}
profiles:
  - {name: small, vcpus: 2, network: Moderate, network_gbps: 0.5}
`
	for _, c := range []struct{ edit, want string }{
		{"profiles:\n  - {name: small, vcpus: 0, network_gbps: 1}", "profiles[0].vcpus: 0"},
		{"profiles:\n  - {name: small, vcpus: 1, network_gbps: -1}", "profiles[0].network_gbps: -1"},
		{"profiles:\n  - {name: 'a b', vcpus: 1, network_gbps: 1}", "profiles[0].name"},
		{"profiles:\n  - {name: a, vcpus: 1, network_gbps: 1}\n  - {name: a, vcpus: 2, network_gbps: 1}", `profiles[1].name: "a" is also profiles[0]`},
		{"profiles: []", "profiles: none listed"},
		{"host: {scale: fast}", `host.scale: "fast"`},
		{"host: {scale: '2'}", `host.scale: "2"`},
		{"host: {cpu_period: 100us}", "host.cpu_period: 100µs"},
		{"host: {short_host_scale: 0}", "host.short_host_scale: 0"},
		{"host: {cores: 3}", "field cores not found"},
		{"vpc: {one_way_gbps: 5, both_ways_gbps: 1}", "vpc.both_ways_gbps: 1"},
		{"profiles:\n  - {name: a, vcpus: many, network_gbps: 1}", "profiles[0] (line 4): cannot unmarshal !!str `many`"},
	} {
		data := base
		key := c.edit[:strings.IndexByte(c.edit, ':')+1]
		if i := strings.Index(data, "\n"+key); i >= 0 {
			end := strings.Index(data[i+1:], "\n") + i + 1
			if key == "profiles:" {
				end = len(data) - 1
			}
			data = data[:i+1] + c.edit + data[end:]
		} else {
			data += c.edit + "\n"
		}
		_, err := Parse([]byte(data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to contain %q", c.edit, err, c.want)
		}
	}
}

func TestResolveScale(t *testing.T) {
	f, err := Load("../profiles.yaml")
	if err != nil {
		t.Fatal(err)
	}
	large, _ := f.Select([]string{"c4.large"})
	// 2 gateways x 2 lanes x 2 vCPUs + 4 reserved = 12 CPUs for 1:1.
	e, err := f.Resolve(large, 2, 12, "")
	if err != nil || e.Scale != 1 || !e.Cpusets {
		t.Errorf("12 CPUs: %+v %v, want 1:1 with cpusets", e, err)
	}
	e, err = f.Resolve(large, 2, 2, "")
	if err != nil || e.Scale != 0.05 || e.Cpusets || !strings.Contains(e.Reason, "1:1 needs 12") {
		t.Errorf("2 CPUs: %+v %v, want the short-host scale", e, err)
	}
	e, err = f.Resolve(large, 2, 2, "0.2")
	if err != nil || e.Scale != 0.2 || !strings.Contains(e.Reason, "--scale") {
		t.Errorf("--scale 0.2: %+v %v", e, err)
	}
	if _, err := f.Resolve(large, 2, 2, "3"); err == nil {
		t.Error("--scale 3 accepted")
	}
}

func TestLimits(t *testing.T) {
	e := Emulation{Scale: 0.05, CPUPeriod: 10 * time.Millisecond}
	l := e.Limits(Profile{VCPUs: 2, NetworkGbps: 0.5})
	if l.Quota != time.Millisecond || l.Period != 10*time.Millisecond || l.RateBitsPS != 5e8 {
		t.Errorf("c4.large at 0.05: %+v, want 1 ms per 10 ms at the real 0.5 Gbit/s", l)
	}
	// 1 vCPU x 0.05 is 0.5 ms per 10 ms: below the kernel's 1 ms, so the
	// period stretches to keep the share.
	l = e.Limits(Profile{VCPUs: 1, NetworkGbps: 1})
	if l.Quota != time.Millisecond || l.Period != 20*time.Millisecond {
		t.Errorf("1 vCPU at 0.05: %+v, want 1 ms per 20 ms", l)
	}
	e.ScaleNetwork = true
	if l := e.Limits(Profile{VCPUs: 36, NetworkGbps: 10}); l.RateBitsPS != 5e8 || l.CPUs != 1.8 {
		t.Errorf("c4.8xlarge scaled: %+v", l)
	}
	if r := e.LineRate(VPC{OneWayGbps: 5}); r != 25e7 {
		t.Errorf("scaled line rate %d", r)
	}
}

func TestSelect(t *testing.T) {
	f, _ := Load("../profiles.yaml")
	p, err := f.Select([]string{"c4.8xlarge", "c4.large"})
	if err != nil || len(p) != 2 || p[0].Name != "c4.8xlarge" {
		t.Errorf("Select: %v %v", p, err)
	}
	if _, err := f.Select([]string{"m5.large"}); err == nil || !strings.Contains(err.Error(), "c4.large, c4.xlarge") {
		t.Errorf("unknown profile: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	data, _ := os.ReadFile("../profiles.yaml")
	f.Add(data)
	f.Add([]byte("vpc: {one_way_gbps: 5, both_ways_gbps: 10}\nprofiles:\n  - {name: a, vcpus: 1, network_gbps: 1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses must resolve to limits the kernel takes.
		e, err := file.Resolve(file.Profiles, 4, 2, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range file.Profiles {
			l := e.Limits(p)
			if l.Quota < time.Millisecond || l.Period < l.Quota/time.Duration(max(1, p.VCPUs)) || l.RateBitsPS == 0 {
				t.Errorf("%+v: limits %+v", p, l)
			}
		}
	})
}
