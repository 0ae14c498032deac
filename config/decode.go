package config

import (
	"encoding"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// The file decodes straight into typed fields (netip, flowhash.Mode,
// HostPort). yaml.v3 ends decoding at the first value its TextUnmarshaler
// refuses, with no line, so before decoding, checkTree walks the document
// beside the Go types: it names every unknown field and every value that
// does not parse by its field path, and nulls such values so the decoder
// and the checker still report everything else in one pass.

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// valueCheck gives the file's wording for a bad value of a type, where
// the type's own error is not the one an operator should read.
var valueCheck = map[reflect.Type]func(s string) error{
	reflect.TypeFor[netip.Prefix](): func(s string) error {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("%q is not a prefix like 10.1.0.0/16 or fd00:a::/64", s)
		}
		return nil
	},
	reflect.TypeFor[netip.Addr](): func(s string) error {
		if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" {
			return fmt.Errorf("%q is not an IP address (no prefix length or zone)", s)
		}
		return nil
	},
}

// checkTree returns the paths of the values it nulled.
func checkTree(n *yaml.Node, t reflect.Type, path string, errs *Errors) (bad []string) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			bad = append(bad, checkTree(c, t, path, errs)...)
		}
		return bad
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if check, ok := valueCheck[t]; ok || reflect.PointerTo(t).Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			return nil // the decoder names the kind mismatch
		}
		if check == nil {
			check = func(s string) error {
				return reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s))
			}
		}
		if err := check(n.Value); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %v", path, err))
			n.Tag, n.Value, n.Style = "!!null", "", 0
			return []string{path}
		}
		return nil
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		var names []string
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fields[name] = f.Type
			names = append(names, name)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			fp := k.Value
			if path != "" {
				fp = path + "." + k.Value
			}
			ft, ok := fields[k.Value]
			if !ok {
				slices.Sort(names)
				*errs = append(*errs, fmt.Errorf("%s (line %d): field %s not found (known: %s)", fp, k.Line, k.Value, strings.Join(names, ", ")))
				continue
			}
			bad = append(bad, checkTree(v, ft, fp, errs)...)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			bad = append(bad, checkTree(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)...)
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			bad = append(bad, checkTree(n.Content[i+1], t.Elem(), path+"."+n.Content[i].Value, errs)...)
		}
	}
	return bad
}

// HostPort is an address as the file gives it: "ip:port", or a bare "ip"
// for the field's default port (the checker fills it in).
type HostPort struct{ netip.AddrPort }

func (h *HostPort) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "" {
		*h = HostPort{} // the checker says it is missing
		return nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		h.AddrPort = netip.AddrPortFrom(a.Unmap(), 0)
		return nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" {
		return fmt.Errorf("%q: want ip:port, e.g. 10.1.0.11:6081 or [fd00::11]:6081", s)
	}
	if ap.Port() == 0 {
		return fmt.Errorf("%q: port 0", s)
	}
	h.AddrPort = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return nil
}

func (h HostPort) MarshalText() ([]byte, error) {
	if !h.IsValid() {
		return nil, nil
	}
	if h.Port() == 0 {
		return h.Addr().MarshalText()
	}
	return h.AddrPort.MarshalText()
}
