package netns

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Guard is a TCP destination that, from inside the pod, only the processes of one user may
// connect to: the registry relay and the sidecar's admin listener, for the sidecar (and the
// launcher, which dials as the sidecar's user) and not the app.
type Guard struct {
	Addr netip.AddrPort `json:"addr"`
	UID  uint32         `json:"uid"`
}

// isolate installs, inside the pod's namespace only, the rules that make a pod reachable
// from outside on its open ports alone, and its guarded destinations reachable from inside
// by their user alone:
//
//	table inet podmesh {
//	  chain input { type filter hook input priority 0; policy accept;
//	    iifname "eth0" ct state established,related accept
//	    iifname "eth0" tcp dport { OPEN… } accept
//	    iifname "eth0" meta l4proto icmp accept
//	    iifname "eth0" drop
//	  }
//	  chain output { type filter hook output priority 0; policy accept;
//	    ip daddr GUARD.ADDR tcp dport GUARD.PORT meta skuid != GUARD.UID reject with tcp reset  # each guard
//	  }
//	}
//
// So an app that listens on 0.0.0.0 is still reachable only through its sidecar (and from
// inside the pod), as the registry promises: only the sidecar's address is registered. The
// pod's own outbound connections are answered through conntrack. A socket's user is the
// file-system uid of the thread that created it (meta skuid); packets without a socket
// (the kernel's own resets) match no guard. The host's firewall is not touched.
func isolate(pin string, open []uint16, guards []Guard) error {
	var conn *nftables.Conn
	// A lasting connection opens its netlink socket now, on this throw-away thread in the pod.
	err := Do(pin, func() error {
		var err error
		conn, err = nftables.New(nftables.AsLasting())
		return err
	})
	if err != nil {
		return fmt.Errorf("netns: nftables in %s: %w", pin, err)
	}
	defer conn.CloseLasting()
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: Prefix})
	policy := nftables.ChainPolicyAccept
	chain := conn.AddChain(&nftables.Chain{
		Name: "input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	eth := func(rest ...expr.Any) []expr.Any {
		return append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(PodIfName)},
		}, rest...)
	}
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	state := make([]byte, 4)
	binary.NativeEndian.PutUint32(state, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: eth(
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: state, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		accept,
	)})
	for _, port := range open {
		p := make([]byte, 2)
		binary.BigEndian.PutUint16(p, port)
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: eth(
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
			accept,
		)})
	}
	conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: eth(
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		accept,
	)})
	conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: eth(&expr.Verdict{Kind: expr.VerdictDrop})})
	if len(guards) > 0 {
		out := conn.AddChain(&nftables.Chain{
			Name: "output", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &policy,
		})
		for _, g := range guards {
			if !g.Addr.Addr().Is4() {
				return fmt.Errorf("netns: guard %v in %s: only IPv4 destinations", g.Addr, pin)
			}
			a := g.Addr.Addr().As4()
			port := make([]byte, 2)
			binary.BigEndian.PutUint16(port, g.Addr.Port())
			uid := make([]byte, 4)
			binary.NativeEndian.PutUint32(uid, g.UID)
			conn.AddRule(&nftables.Rule{Table: table, Chain: out, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
				&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: uid},
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
			}})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("netns: install isolation rules in %s: %w", pin, err)
	}
	return nil
}

// ifname is an interface name as nftables compares it: NUL-padded to IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
