package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// DefaultMasqueradeTable is the companion table the IPVS dataplane uses.
const DefaultMasqueradeTable = "flotilla-lvscare-ipvs"

// Masquerade is the nftables half of the IPVS dataplane, as in kube-proxy's IPVS mode:
// it marks new connections to a VIP before IPVS sees them and masquerades marked packets
// on the way out, so backends answer this node whatever the client's source address.
// IPVS must keep conntrack entries for this (net.ipv4.vs.conntrack=1).
type Masquerade struct {
	table   string
	mu      sync.Mutex
	applied []netip.Addr
	written bool
}

// NewMasquerade returns a Masquerade over the named table (DefaultMasqueradeTable if empty).
func NewMasquerade(table string) *Masquerade {
	if table == "" {
		table = DefaultMasqueradeTable
	}
	return &Masquerade{table: table}
}

// Ensure makes the table mark exactly the given VIPs; it rewrites the table in one
// batch only when the VIPs changed or the table no longer holds what was written.
func (m *Masquerade) Ensure(vips []netip.Addr) error {
	vips = slices.Clone(vips)
	slices.SortFunc(vips, netip.Addr.Compare)
	vips = slices.Compact(vips)
	for _, a := range vips {
		if !a.Is4() {
			return fmt.Errorf("vip %s: masquerading for IPVS handles IPv4 only", a)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := newConn()
	if err != nil {
		return err
	}
	want := layout{rules: map[string]int{preroutingName: 1, outputName: 1, postroutingName: 1}, mapElems: -1, vipElems: len(vips)}
	if m.written && slices.Equal(vips, m.applied) {
		have, err := readLayout(c, m.table)
		if err != nil {
			return err
		}
		if have.equal(want) {
			return nil
		}
	}
	t := &nftables.Table{Name: m.table, Family: nftables.TableFamilyIPv4}
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(t)
	set := &nftables.Set{Table: t, Name: vipSet, KeyType: nftables.TypeIPAddr}
	var elems []nftables.SetElement
	for _, a := range vips {
		elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("queue set %s: %w", vipSet, err)
	}
	mark := binaryutil.NativeEndian.PutUint32(MasqueradeMark)
	notMark := binaryutil.NativeEndian.PutUint32(^uint32(MasqueradeMark))
	accept := nftables.ChainPolicyAccept
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
	}{{preroutingName, nftables.ChainHookPrerouting}, {outputName, nftables.ChainHookOutput}} {
		// Priority dstnat: before IPVS, which hooks in just after NAT.
		ch := c.AddChain(&nftables.Chain{Name: h.name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: h.hook, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: vipSet, SetID: set.ID},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: notMark, Xor: mark},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
		}})
	}
	post := c.AddChain(&nftables.Chain{Name: postroutingName, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table ip %s: %w", m.table, err)
	}
	m.applied, m.written = vips, true
	return nil
}

// Remove deletes the table; a missing table is not an error.
func (m *Masquerade) Remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := newConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: m.table, Family: nftables.TableFamilyIPv4}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table ip %s: %w", m.table, err)
	}
	m.written = false
	return nil
}
