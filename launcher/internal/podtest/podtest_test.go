package podtest

import (
	"net/netip"
	"testing"

	"github.com/podmesh/podmesh/launcher/compose"
)

// TestNetworkAvoidsDefaults: the tests' subnets never overlap the default pod subnet (what
// `make demo` and a user's `launcher up` use), nor the demo test's range.
func TestNetworkAvoidsDefaults(t *testing.T) {
	demo := netip.MustParsePrefix("10.232.0.0/16") // examples/shop/demo_test.go
	bench := netip.MustParsePrefix("10.86.0.0/24") // bench/launcher default
	for i := 0; i < 300; i++ {
		_, subnet := Network(t)
		if !TestRange.Contains(subnet.Addr()) || subnet.Bits() != 24 {
			t.Fatalf("subnet %v outside %v", subnet, TestRange)
		}
		for _, other := range []netip.Prefix{compose.DefaultSubnet, demo, bench} {
			if subnet.Overlaps(other) {
				t.Fatalf("test subnet %v overlaps %v", subnet, other)
			}
		}
	}
}
