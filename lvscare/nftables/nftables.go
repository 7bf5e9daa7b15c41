// Package nftables is lvscare's nftables dataplane: one table of its own, a verdict map from
// VIP, protocol and port to a service chain, numgen over per-backend DNAT chains, applied in one batch.
package nftables

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
	"github.com/flotilla-dev/flotilla/lvscare/vip"
)

// DefaultTable is the name of the table lvscare owns (family ip).
const DefaultTable = "flotilla-lvscare"

// MasqueradeMark is the packet-mark bit the endpoint chains set so that the
// postrouting chain masquerades exactly lvscare's connections. It is clear of the
// bits kube-proxy (0x4000, 0x8000) and Calico (0xffff0000) use.
const MasqueradeMark = 0x00200000

// Names of the fixed objects in the table; the layout follows kube-proxy's nftables mode.
const (
	serviceMap      = "service-ips" // ipv4_addr . inet_proto . inet_service : verdict
	vipSet          = "vips"        // the VIP addresses, for operators and other rules to match
	servicesChain   = "services"
	preroutingName  = "nat-prerouting"
	outputName      = "nat-output"
	postroutingName = "nat-postrouting"
)

// Options configure the dataplane.
type Options struct {
	Table string // default DefaultTable
	Log   *slog.Logger
}

// Dataplane programs nftables through netlink; it needs no nft binary.
type Dataplane struct {
	opts Options
	mu   sync.Mutex
	// applied is the last state written successfully.
	applied []dataplane.Service
	written bool
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// New returns an nftables dataplane; it touches nothing until Reconcile or Clean.
func New(opts Options) *Dataplane {
	if opts.Table == "" {
		opts.Table = DefaultTable
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Dataplane{opts: opts}
}

// Name implements dataplane.Dataplane.
func (d *Dataplane) Name() string { return "nftables" }

// Supported reports whether the kernel accepts nftables netlink requests here.
func Supported() error {
	c, err := newConn()
	if err != nil {
		return err
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	return nil
}

// Validate rejects services this dataplane cannot program.
func Validate(services []dataplane.Service) error {
	for _, s := range services {
		if !s.VIP.Addr().Is4() {
			return fmt.Errorf("vip %s: the nftables dataplane handles IPv4 only", s.VIP)
		}
		for _, b := range s.Backends {
			if !b.Addr().Is4() {
				return fmt.Errorf("vip %s: backend %s: the nftables dataplane handles IPv4 only", s.VIP, b)
			}
		}
	}
	return nil
}

// Reconcile implements dataplane.Dataplane. It rewrites the whole table in one atomic batch
// when the desired state changed or when the kernel no longer holds what was last written
// (someone flushed or deleted it), and otherwise leaves the kernel alone.
func (d *Dataplane) Reconcile(ctx context.Context, services []dataplane.Service) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	services = dataplane.Normalize(services)
	if err := Validate(services); err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vips := make([]netip.Addr, 0, len(services))
	for _, s := range services {
		vips = append(vips, s.VIP.Addr())
	}
	if err := vip.EnsureRoutes(vips); err != nil {
		return false, err
	}
	c, err := newConn()
	if err != nil {
		return false, err
	}
	want := layoutOf(services)
	if d.written && dataplane.Equal(services, d.applied) {
		have, err := readLayout(c, d.opts.Table)
		if err != nil {
			return false, err
		}
		if have.equal(want) {
			return false, nil
		}
		d.opts.Log.Warn("nftables rules drifted from what lvscare wrote, re-creating them", "table", d.opts.Table, "want", want.String(), "have", have.String())
	}
	if err := d.write(c, services); err != nil {
		return false, err
	}
	d.applied, d.written = services, true
	return true, nil
}

// Clean implements dataplane.Dataplane: it deletes the table and the VIP routes.
func (d *Dataplane) Clean(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := newConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: d.opts.Table, Family: nftables.TableFamilyIPv4}
	// Adding before deleting makes the delete succeed whether or not the table exists.
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table ip %s: %w", d.opts.Table, err)
	}
	d.written = false
	return vip.RemoveRoutes()
}

func (d *Dataplane) write(c *nftables.Conn, services []dataplane.Service) error {
	t := &nftables.Table{Name: d.opts.Table, Family: nftables.TableFamilyIPv4}
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(t)
	if err := program(c, t, services); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table ip %s (%d services, %d backends): %w", d.opts.Table, len(services), countBackends(services), err)
	}
	return nil
}

// program queues the whole table content on c; nothing reaches the kernel before Flush.
func program(c *nftables.Conn, t *nftables.Table, services []dataplane.Service) error {
	svcMap := &nftables.Set{
		Table: t, Name: serviceMap, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.TypeVerdict,
	}
	vips := &nftables.Set{Table: t, Name: vipSet, KeyType: nftables.TypeIPAddr}
	mark := binaryutil.NativeEndian.PutUint32(MasqueradeMark)
	var mapElems, vipElems []nftables.SetElement
	seenVIP := map[netip.Addr]bool{}
	for _, s := range services {
		mapElems = append(mapElems, nftables.SetElement{
			Key:         serviceKey(s.VIP, unix.IPPROTO_TCP),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: serviceChain(s.VIP)},
		})
		if !seenVIP[s.VIP.Addr()] {
			seenVIP[s.VIP.Addr()] = true
			vipElems = append(vipElems, nftables.SetElement{Key: s.VIP.Addr().AsSlice()})
		}
	}
	if err := c.AddSet(svcMap, nil); err != nil {
		return fmt.Errorf("queue map %s: %w", serviceMap, err)
	}
	if err := c.AddSet(vips, nil); err != nil {
		return fmt.Errorf("queue set %s: %w", vipSet, err)
	}
	// Chains first: map elements may only jump to chains that exist.
	dispatch := c.AddChain(&nftables.Chain{Name: servicesChain, Table: t})
	for _, s := range services {
		svc := c.AddChain(&nftables.Chain{Name: serviceChain(s.VIP), Table: t})
		if err := programService(c, t, svc, s); err != nil {
			return err
		}
	}
	if len(mapElems) > 0 {
		if err := c.SetAddElements(svcMap, mapElems); err != nil {
			return fmt.Errorf("queue elements of map %s: %w", serviceMap, err)
		}
	}
	if len(vipElems) > 0 {
		if err := c.SetAddElements(vips, vipElems); err != nil {
			return fmt.Errorf("queue elements of set %s: %w", vipSet, err)
		}
	}
	// services: ip daddr . meta l4proto . th dport vmap @service-ips
	c.AddRule(&nftables.Rule{Table: t, Chain: dispatch, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
		&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: serviceMap, SetID: svcMap.ID},
	}})
	accept := nftables.ChainPolicyAccept
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
		prio *nftables.ChainPriority
	}{
		{preroutingName, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest},
		{outputName, nftables.ChainHookOutput, nftables.ChainPriorityNATDest},
	} {
		ch := c.AddChain(&nftables.Chain{Name: h.name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: h.hook, Priority: h.prio, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Verdict{Kind: expr.VerdictJump, Chain: servicesChain},
		}})
	}
	// Masquerade every connection an endpoint chain marked: the backend then answers
	// this node, which undoes the DNAT, whatever the client's route.
	post := c.AddChain(&nftables.Chain{Name: postroutingName, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{},
	}})
	return nil
}

// programService fills a service chain: numgen over endpoint chains, or reject when empty.
func programService(c *nftables.Conn, t *nftables.Table, svc *nftables.Chain, s dataplane.Service) error {
	if len(s.Backends) == 0 {
		// Every backend is down: answer the SYN with a reset at once instead of
		// letting the client wait for a timeout.
		c.AddRule(&nftables.Rule{Table: t, Chain: svc, Exprs: []expr.Any{
			&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
		}})
		return nil
	}
	mark := binaryutil.NativeEndian.PutUint32(MasqueradeMark)
	notMark := binaryutil.NativeEndian.PutUint32(^uint32(MasqueradeMark))
	eps := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	var elems []nftables.SetElement
	for i, b := range s.Backends {
		name := endpointChain(s.VIP, b)
		ep := c.AddChain(&nftables.Chain{Name: name, Table: t})
		port := binaryutil.BigEndian.PutUint16(b.Port())
		c.AddRule(&nftables.Rule{Table: t, Chain: ep, Exprs: []expr.Any{
			// meta mark set meta mark | MasqueradeMark
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: notMark, Xor: mark},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
			&expr.Immediate{Register: 1, Data: b.Addr().AsSlice()},
			&expr.Immediate{Register: 2, Data: port},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}})
		elems = append(elems, nftables.SetElement{
			Key:         binaryutil.NativeEndian.PutUint32(uint32(i)),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: name},
		})
	}
	if err := c.AddSet(eps, elems); err != nil {
		return fmt.Errorf("queue endpoint map of %s: %w", s.VIP, err)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: svc, Exprs: []expr.Any{
		&expr.Numgen{Register: 1, Modulus: uint32(len(s.Backends)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: eps.Name, SetID: eps.ID},
	}})
	return nil
}

func serviceKey(ap netip.AddrPort, proto byte) []byte {
	k := make([]byte, 12)
	copy(k[0:4], ap.Addr().AsSlice())
	k[4] = proto
	copy(k[8:10], binaryutil.BigEndian.PutUint16(ap.Port()))
	return k
}

func serviceChain(v netip.AddrPort) string { return fmt.Sprintf("svc-%s-tcp-%d", v.Addr(), v.Port()) }

func endpointChain(v, b netip.AddrPort) string {
	return fmt.Sprintf("ep-%s-tcp-%d-%s-%d", v.Addr(), v.Port(), b.Addr(), b.Port())
}

func countBackends(services []dataplane.Service) int {
	n := 0
	for _, s := range services {
		n += len(s.Backends)
	}
	return n
}
