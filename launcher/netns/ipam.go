package netns

import (
	"fmt"
	"net/netip"
)

// Allocate returns the lowest address of subnet that is neither the network address, the
// gateway (the first host address), the broadcast address, nor in used. The result depends
// only on subnet and used, so an allocation recorded in the launcher's state is found again
// after a crash and a fresh run hands out the same addresses in the same order.
func Allocate(subnet netip.Prefix, used map[netip.Addr]bool) (netip.Addr, error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("netns: allocate in %v: not an IPv4 prefix", subnet)
	}
	base := subnet.Masked().Addr()
	last := lastAddr(subnet)
	for a := base.Next().Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("netns: allocate in %v: all %d pod addresses in use", subnet, len(used))
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	if host >= 32 {
		v = ^uint32(0)
	} else {
		v |= (uint32(1) << host) - 1
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
