package netns

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// isolate installs, inside the pod's namespace only, the rule that makes a pod reachable
// from outside on its open ports alone:
//
//	table inet podmesh {
//	  chain input { type filter hook input priority 0; policy accept;
//	    iifname "eth0" ct state established,related accept
//	    iifname "eth0" tcp dport { OPEN… } accept
//	    iifname "eth0" meta l4proto icmp accept
//	    iifname "eth0" drop
//	  }
//	}
//
// So an app that listens on 0.0.0.0 is still reachable only through its sidecar (and from
// inside the pod), as the registry promises: only the sidecar's address is registered. The
// pod's own outbound connections are answered through conntrack. The host's firewall is
// not touched.
func isolate(pin string, open []uint16) error {
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
