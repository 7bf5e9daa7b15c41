package nftables

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
)

// layout is what lvscare checks every interval to notice a flushed or edited table:
// the rule count of every chain and the element counts of the named sets.
type layout struct {
	rules    map[string]int
	mapElems int
	vipElems int
}

func layoutOf(services []dataplane.Service) layout {
	l := layout{rules: map[string]int{servicesChain: 1, preroutingName: 1, outputName: 1, postroutingName: 1}}
	vips := map[string]bool{}
	for _, s := range services {
		l.rules[serviceChain(s.VIP)] = 1
		for _, b := range s.Backends {
			l.rules[endpointChain(s.VIP, b)] = 1
		}
		l.mapElems++
		vips[s.VIP.Addr().String()] = true
	}
	l.vipElems = len(vips)
	return l
}

func (l layout) equal(o layout) bool {
	return maps.Equal(l.rules, o.rules) && l.mapElems == o.mapElems && l.vipElems == o.vipElems
}

func (l layout) String() string {
	if l.rules == nil {
		return "no table"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d chains, %d map elements, %d vips", len(l.rules), l.mapElems, l.vipElems)
	names := slices.Sorted(maps.Keys(l.rules))
	n := 0
	for _, c := range names {
		n += l.rules[c]
	}
	fmt.Fprintf(&sb, ", %d rules", n)
	return sb.String()
}

// readLayout reads the table back from the kernel; a missing table gives an empty layout.
func readLayout(c *nftables.Conn, table string) (layout, error) {
	t, err := c.ListTableOfFamily(table, nftables.TableFamilyIPv4)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
			return layout{}, nil
		}
		return layout{}, fmt.Errorf("read nftables table ip %s: %w", table, err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return layout{}, fmt.Errorf("list chains of table ip %s: %w", table, err)
	}
	l := layout{rules: map[string]int{}}
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return layout{}, fmt.Errorf("list rules of chain %s in table ip %s: %w", ch.Name, table, err)
		}
		l.rules[ch.Name] = len(rules)
	}
	for name, dst := range map[string]*int{serviceMap: &l.mapElems, vipSet: &l.vipElems} {
		s, err := c.GetSetByName(t, name)
		if err != nil {
			*dst = -1 // missing set: never equal to a wanted count
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return layout{}, fmt.Errorf("list elements of %s in table ip %s: %w", name, table, err)
		}
		*dst = len(elems)
	}
	return l, nil
}
