// Package netns is the pod network: one network namespace per pod, pinned by a bind mount
// so it outlives the processes in it (a restarted app keeps its address), joined to a host
// bridge by a veth pair whose pod end is created directly inside the namespace.
//
// The long-lived launcher never switches the network namespace of a thread it gives back to
// the Go scheduler. Everything that must happen inside a pod's namespace (creating it,
// opening a netlink socket in it, dialling or listening in it) runs on a goroutine that
// locks its OS thread, enters the namespace and then ends without unlocking, so the runtime
// destroys that thread (Go ≥ 1.10; golang/go#20395). A socket keeps the namespace it was
// created in, so the connection or netlink handle it returns is usable from any goroutine.
//
// Nothing else on the host changes: no sysctl (ip_forward stays as it is), no firewall
// rule in the host namespace (each pod gets an nftables table of its own, inside its
// namespace, that admits inbound traffic only on its open ports). Pods reach each other over the bridge (one L2 segment) and the
// host through the bridge's gateway address, which is all the mesh needs.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Prefix starts the name of every network object this package creates (pins, veths), so
// leftovers can be listed and removed.
const Prefix = "podmesh"

// PinDir is where namespace pins live: the directory `ip netns` uses, so
// `ip netns exec podmesh-<project>-<service>-<n> …` works for debugging.
const PinDir = "/run/netns"

// PodIfName is the name of the veth end inside every pod.
const PodIfName = "eth0"

// Network is the host side of the pod network: a bridge holding the subnet's gateway address.
type Network struct {
	Bridge string       // bridge interface name, e.g. "podmesh0"
	Subnet netip.Prefix // pod addresses; the first host address is the gateway
}

// Gateway is the bridge's address: the first host address of the subnet.
func (n Network) Gateway() netip.Addr { return n.Subnet.Masked().Addr().Next() }

// Validate checks the bridge name and the subnet.
func (n Network) Validate() error {
	if n.Bridge == "" || len(n.Bridge) > unix.IFNAMSIZ-1 || strings.ContainsAny(n.Bridge, "/ \t\n:") {
		return fmt.Errorf("netns: bridge name %q: must be 1 to %d characters without '/', ':' or spaces", n.Bridge, unix.IFNAMSIZ-1)
	}
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() {
		return fmt.Errorf("netns: subnet %v: must be an IPv4 prefix", n.Subnet)
	}
	if n.Subnet.Bits() > 30 {
		return fmt.Errorf("netns: subnet %v: too small, need at least a /30", n.Subnet)
	}
	return nil
}

// BridgeState says what EnsureBridge had to create, so teardown removes only that.
type BridgeState struct {
	CreatedLink bool `json:"created_link"` // the bridge did not exist before
	AddedAddr   bool `json:"added_addr"`   // the gateway address was not on it before
}

// EnsureBridge creates the bridge if it is missing, puts the gateway address on it and sets
// it up. It refuses a subnet that overlaps an address on another interface of the host.
func EnsureBridge(n Network) (BridgeState, error) {
	var st BridgeState
	if err := n.Validate(); err != nil {
		return st, err
	}
	if err := checkOverlap(n); err != nil {
		return st, err
	}
	link, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return st, fmt.Errorf("netns: look up bridge %s: %w", n.Bridge, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge, HardwareAddr: BridgeMAC(n)}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return st, fmt.Errorf("netns: create bridge %s: %w", n.Bridge, err)
		}
		st.CreatedLink = true
		if link, err = netlink.LinkByName(n.Bridge); err != nil {
			return st, fmt.Errorf("netns: look up new bridge %s: %w", n.Bridge, err)
		}
	} else if link.Type() != "bridge" {
		return st, fmt.Errorf("netns: interface %s exists and is a %s, not a bridge", n.Bridge, link.Type())
	}
	gw := gatewayAddr(n)
	if err := netlink.AddrAdd(link, gw); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return st, fmt.Errorf("netns: add %v to bridge %s: %w", n.Subnet, n.Bridge, err)
		}
	} else {
		st.AddedAddr = true
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return st, fmt.Errorf("netns: set bridge %s up: %w", n.Bridge, err)
	}
	return st, nil
}

// BridgeMAC is the fixed MAC address EnsureBridge gives a bridge it creates: locally
// administered (02:50) followed by the gateway's IPv4 address, so it is unique on the host.
// A bridge without an address of its own takes the lowest MAC among its ports and changes it
// whenever a port with a lower one joins; pods that learned the old one in their ARP cache
// then send frames the host drops as not its own, and new connections to the gateway (the
// registry relay) hang until the entry expires, 10–50 s later.
func BridgeMAC(n Network) net.HardwareAddr {
	gw := n.Gateway().As4()
	return net.HardwareAddr{0x02, 0x50, gw[0], gw[1], gw[2], gw[3]}
}

// BridgeIntent says what EnsureBridge would create now (the bridge, the gateway address), so
// a caller records it before EnsureBridge runs: a crash in between still leaves a record of
// what to remove.
func BridgeIntent(n Network) (BridgeState, error) {
	link, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		if isNotFound(err) {
			return BridgeState{CreatedLink: true, AddedAddr: true}, nil
		}
		return BridgeState{}, fmt.Errorf("netns: look up bridge %s: %w", n.Bridge, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return BridgeState{}, fmt.Errorf("netns: addresses of bridge %s: %w", n.Bridge, err)
	}
	gw := gatewayAddr(n)
	for _, a := range addrs {
		if a.IPNet.String() == gw.IPNet.String() {
			return BridgeState{}, nil
		}
	}
	return BridgeState{AddedAddr: true}, nil
}

// LockDir holds the host-wide bridge locks (LockBridge).
var LockDir = "/run/podmesh/bridges"

// ErrBridgeBusy: another launcher holds the bridge (LockBridge).
var ErrBridgeBusy = errors.New("netns: bridge in use by another launcher")

// LockBridge takes the host-wide lock on a bridge for owner (a project name), held until
// the returned file is closed or the process ends. One launcher per bridge: each allocates
// its pods' addresses on its own and removes the gateway address when it stops, so two
// projects on one bridge would hand out the same addresses and cut each other off. When
// another launcher holds it, the error wraps ErrBridgeBusy and names its owner.
func LockBridge(bridge, owner string) (*os.File, error) {
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("netns: bridge lock dir: %w", err)
	}
	path := filepath.Join(LockDir, bridge+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("netns: bridge lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is used by the launcher of project %q; give this project its own x-podmesh bridge and subnet",
				ErrBridgeBusy, bridge, strings.TrimSpace(string(b)))
		}
		return nil, fmt.Errorf("netns: lock bridge %s: %w", bridge, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(owner+"\n"), 0)
	}
	return f, nil
}

func gatewayAddr(n Network) *netlink.Addr {
	gw := n.Gateway()
	return &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(n.Subnet.Bits(), 32)}}
}

// checkOverlap fails when an interface other than the bridge holds an address inside the
// subnet, or the bridge holds one that is not the gateway: pods would then shadow a network
// the host already uses.
func checkOverlap(n Network) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("netns: list host addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		other := netip.PrefixFrom(ip, ones).Masked()
		if !other.Overlaps(n.Subnet) {
			continue
		}
		name := ""
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		if name == n.Bridge && ip == n.Gateway() && ones == n.Subnet.Bits() {
			continue
		}
		return fmt.Errorf("netns: subnet %v overlaps %v on interface %s; choose another x-podmesh subnet", n.Subnet, netip.PrefixFrom(ip, ones), name)
	}
	return nil
}

// RemoveBridge undoes what EnsureBridge recorded in st: the gateway address, and the bridge
// itself when it created it and no other interface is attached to it. Missing objects are
// not an error.
func RemoveBridge(n Network, st BridgeState) error {
	link, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("netns: look up bridge %s: %w", n.Bridge, err)
	}
	if st.CreatedLink {
		ports, err := bridgePorts(link)
		if err != nil {
			return err
		}
		if len(ports) == 0 {
			if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
				return fmt.Errorf("netns: delete bridge %s: %w", n.Bridge, err)
			}
			return nil
		}
	}
	if st.AddedAddr {
		if err := netlink.AddrDel(link, gatewayAddr(n)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !isNotFound(err) {
			return fmt.Errorf("netns: remove %v from bridge %s: %w", n.Gateway(), n.Bridge, err)
		}
	}
	return nil
}

func bridgePorts(br netlink.Link) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("netns: list links: %w", err)
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	return ports, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// Pod is one pod's network: a pinned namespace with a veth to the bridge.
type Pod struct {
	Name   string       `json:"name"`    // pin name: "podmesh-<project>.<service>-<n>"
	Pin    string       `json:"pin"`     // PinDir/Name
	HostIf string       `json:"host_if"` // host end of the veth
	Addr   netip.Prefix `json:"addr"`    // the pod's address with the subnet's length
	// Open lists the TCP ports reachable on the pod's address from outside the pod; every
	// other inbound packet on eth0 is dropped (connections the pod opened excepted).
	Open []uint16 `json:"open,omitempty"`
	// Guard lists destinations only one user may connect to from inside the pod.
	Guard []Guard `json:"guard,omitempty"`
}

// PinName is the namespace pin name for a replica: "podmesh-<project>.<service>-<n>". It is
// injective: neither a project name nor a service name holds a '.' (compose allows
// [a-z0-9_-] and DNS labels), and the replica follows the last '-', so projects "a-b" and
// "a" with a service "b-c" do not share a pin ("podmesh-a-b.c-1", "podmesh-a.b-c-1").
func PinName(project, service string, replica int) string {
	return fmt.Sprintf("%s-%s.%s-%d", Prefix, project, service, replica)
}

// HostIfName is the host end's name for a pin: Prefix plus 8 hex digits of a hash of the
// pin name, 15 characters, the most an interface name can have.
func HostIfName(pin string) string {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(pin); i++ {
		h ^= uint32(pin[i])
		h *= 16777619
	}
	return fmt.Sprintf("%s%08x", Prefix, h)
}

// Plan returns the names a pod's network will get, without creating anything, so the
// caller can record them before Create and remove them after a crash half-way.
func Plan(name string, addr netip.Addr, n Network) Pod {
	return Pod{
		Name:   name,
		Pin:    filepath.Join(PinDir, name),
		HostIf: HostIfName(name),
		Addr:   netip.PrefixFrom(addr, n.Subnet.Bits()),
	}
}

// Create builds the pod network p (from Plan): a new network namespace pinned at p.Pin with
// loopback up and unprivileged ports from 0 (so the app and the sidecar bind :80 without
// capabilities; the sysctl is per namespace), a veth pair whose pod end (eth0) is created
// inside the namespace and whose host end joins the bridge, the pod's address, a default
// route through the gateway, and the isolation rules (only p.Open reachable from outside).
// On error, whatever this call created is removed, and nothing else: a pin or veth of the
// same name that already existed (another pod's) is left alone.
func Create(n Network, p Pod) (err error) {
	bridge, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("netns: look up bridge %s: %w", n.Bridge, err)
	}
	var created Pod // what this call made, for the cleanup on error
	defer func() {
		if err != nil {
			_ = Remove(created)
		}
	}()
	h, err := newPinnedNS(p.Pin)
	if err != nil {
		return err
	}
	created.Pin = p.Pin
	defer h.Close()

	nsf, err := os.Open(p.Pin)
	if err != nil {
		return fmt.Errorf("netns: open pin %s: %w", p.Pin, err)
	}
	defer nsf.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostIf, MasterIndex: bridge.Attrs().Index},
		PeerName:      PodIfName,
		PeerNamespace: netlink.NsFd(int(nsf.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("netns: create veth %s (peer %s in %s): %w", p.HostIf, PodIfName, p.Name, err)
	}
	created.HostIf = p.HostIf
	host, err := netlink.LinkByName(p.HostIf)
	if err != nil {
		return fmt.Errorf("netns: look up veth %s: %w", p.HostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("netns: set %s up: %w", p.HostIf, err)
	}

	eth, err := h.LinkByName(PodIfName)
	if err != nil {
		return fmt.Errorf("netns: look up %s in %s: %w", PodIfName, p.Name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr.Addr().AsSlice(), Mask: net.CIDRMask(p.Addr.Bits(), 32)}}
	if err := h.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("netns: add %v to %s in %s: %w", p.Addr, PodIfName, p.Name, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("netns: set %s up in %s: %w", PodIfName, p.Name, err)
	}
	route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: n.Gateway().AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("netns: default route via %v in %s: %w", n.Gateway(), p.Name, err)
	}
	return isolate(p.Pin, p.Open, p.Guard)
}

// newPinnedNS creates a network namespace on a throw-away thread, pins it at pin, brings
// its loopback up, and returns a netlink handle whose sockets live in it. A pin that exists
// already is an error and stays as it is; on any other error the pin is removed.
func newPinnedNS(pin string) (_ *netlink.Handle, err error) {
	if err := os.MkdirAll(filepath.Dir(pin), 0o755); err != nil {
		return nil, fmt.Errorf("netns: create %s: %w", filepath.Dir(pin), err)
	}
	f, err := os.OpenFile(pin, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("netns: create pin %s: %w", pin, err)
	}
	f.Close()
	defer func() {
		if err != nil {
			_ = Remove(Pod{Pin: pin})
		}
	}()
	type result struct {
		h   *netlink.Handle
		err error
	}
	ch := make(chan result, 1)
	throwaway(func() {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("netns: unshare network namespace: %w", err)}
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, pin, "", unix.MS_BIND, ""); err != nil {
			ch <- result{err: fmt.Errorf("netns: pin %s at %s: %w", self, pin, err)}
			return
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("0"), 0); err != nil {
			ch <- result{err: fmt.Errorf("netns: allow unprivileged ports in %s: %w", pin, err)}
			return
		}
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			ch <- result{err: fmt.Errorf("netns: netlink socket in %s: %w", pin, err)}
			return
		}
		lo, err := h.LinkByName("lo")
		if err == nil {
			err = h.LinkSetUp(lo)
		}
		if err != nil {
			h.Close()
			ch <- result{err: fmt.Errorf("netns: loopback up in %s: %w", pin, err)}
			return
		}
		ch <- result{h: h}
	})
	r := <-ch
	return r.h, r.err
}

// Remove deletes the veth (both ends go together) and the pin. Missing pieces are not an
// error, so Remove also cleans up after a crash half-way through Create.
func Remove(p Pod) error {
	var errs []error
	if p.HostIf != "" {
		if l, err := netlink.LinkByName(p.HostIf); err == nil {
			if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("netns: delete veth %s: %w", p.HostIf, err))
			}
		} else if !isNotFound(err) {
			errs = append(errs, fmt.Errorf("netns: look up veth %s: %w", p.HostIf, err))
		}
	}
	if p.Pin != "" {
		if err := unix.Unmount(p.Pin, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("netns: unmount pin %s: %w", p.Pin, err))
		}
		if err := os.Remove(p.Pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("netns: remove pin %s: %w", p.Pin, err))
		}
	}
	return errors.Join(errs...)
}

// Pins lists the pins in PinDir whose names start with prefix.
func Pins(prefix string) ([]string, error) {
	ents, err := os.ReadDir(PinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: list %s: %w", PinDir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Do runs f on a fresh OS thread that has joined the network namespace pinned at pin, and
// throws that thread away afterwards. f must not start goroutines that expect to be in the
// namespace: they run on other threads.
func Do(pin string, f func() error) error {
	ns, err := os.Open(pin)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", pin, err)
	}
	defer ns.Close()
	var err2 error
	throwaway(func() {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			err2 = fmt.Errorf("netns: enter %s: %w", pin, err)
			return
		}
		err2 = f()
	})
	return err2
}

// throwaway runs f on an OS thread locked to it and lets that thread die afterwards, so
// whatever f changes about its thread (its network namespace) never reaches another
// goroutine. The main thread is special: the runtime never destroys it but parks it for good
// (and /proc/PID/ns/net reports the main thread's namespace), so when the goroutine lands
// there it keeps the main thread locked, which forces the goroutine it starts onto another
// thread, and gives the main thread back untouched.
func throwaway(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			throwaway(f)
			runtime.UnlockOSThread()
			return
		}
		f() // never unlocked: the thread exits with this goroutine
	}()
	<-done
}

// Dial connects to addr from inside the namespace pinned at pin. The returned connection
// belongs to the pod's namespace and can be used from any goroutine.
func Dial(ctx context.Context, pin, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := Do(pin, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: dial %s %s in %s: %w", network, addr, pin, err)
	}
	return conn, nil
}

// DialAs is Dial from a socket owned by uid: the thread that creates it takes uid as its
// file-system uid first (per thread, and the thread is thrown away afterwards), so
// firewall rules on the socket's user (Guard) treat the connection as that user's.
func DialAs(ctx context.Context, pin string, uid uint32, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := Do(pin, func() error {
		// setfsuid reports the previous value, never an error: ask again to know.
		_, _ = unix.SetfsuidRetUid(int(uid))
		if cur, _ := unix.SetfsuidRetUid(-1); cur != int(uid) {
			return fmt.Errorf("set the thread's file-system uid to %d: it stays %d", uid, cur)
		}
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: dial %s %s as uid %d in %s: %w", network, addr, uid, pin, err)
	}
	return conn, nil
}

// Listen opens a listener on addr inside the namespace pinned at pin.
func Listen(pin, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := Do(pin, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: listen %s %s in %s: %w", network, addr, pin, err)
	}
	return l, nil
}

// Dialer dials from inside one network namespace on a single OS thread that it keeps there
// until Close, so that frequent probes (a sidecar's /ready, a TCP health check every few
// milliseconds) do not each create and destroy a thread, which under many pods starting at
// once costs more CPU than the probes themselves. The thread is thrown away on Close.
type Dialer struct {
	pin   string
	reqs  chan func()
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
	ready error // entering the namespace (or taking the uid) failed: every Dial reports it
}

// NewDialer starts a Dialer in the namespace pinned at pin. With uid >= 0 its sockets are
// created with uid as the thread's file-system uid (see DialAs).
func NewDialer(pin string, uid int) *Dialer {
	d := &Dialer{pin: pin, reqs: make(chan func()), stop: make(chan struct{}), done: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		defer close(d.done)
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread is never destroyed: serve from another one (see throwaway).
			d.serve(uid, started)
			runtime.UnlockOSThread()
			return
		}
		d.serveLocked(uid, started) // never unlocked: the thread exits with this goroutine
	}()
	<-started
	return d
}

func (d *Dialer) serve(uid int, started chan struct{}) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		d.serveLocked(uid, started)
	}()
	<-done
}

func (d *Dialer) serveLocked(uid int, started chan struct{}) {
	d.ready = func() error {
		ns, err := os.Open(d.pin)
		if err != nil {
			return fmt.Errorf("netns: open %s: %w", d.pin, err)
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: enter %s: %w", d.pin, err)
		}
		if uid >= 0 {
			_, _ = unix.SetfsuidRetUid(uid)
			if cur, _ := unix.SetfsuidRetUid(-1); cur != uid {
				return fmt.Errorf("set the thread's file-system uid to %d: it stays %d", uid, cur)
			}
		}
		return nil
	}()
	close(started)
	for {
		select {
		case f := <-d.reqs:
			f()
		case <-d.stop:
			return
		}
	}
}

// Dial connects to addr from inside the Dialer's namespace, like Dial.
func (d *Dialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.ready != nil {
		return nil, fmt.Errorf("netns: dial %s %s in %s: %w", network, addr, d.pin, d.ready)
	}
	type res struct {
		conn net.Conn
		err  error
	}
	out := make(chan res, 1)
	f := func() {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		out <- res{c, err}
	}
	select {
	case d.reqs <- f:
	case <-d.stop:
		return nil, fmt.Errorf("netns: dial %s %s in %s: dialer closed", network, addr, d.pin)
	case <-ctx.Done():
		return nil, fmt.Errorf("netns: dial %s %s in %s: %w", network, addr, d.pin, ctx.Err())
	}
	r := <-out
	if r.err != nil {
		return nil, fmt.Errorf("netns: dial %s %s in %s: %w", network, addr, d.pin, r.err)
	}
	return r.conn, nil
}

// Close ends the Dialer's thread once any dial under way has returned. It is safe to call
// more than once.
func (d *Dialer) Close() {
	d.once.Do(func() { close(d.stop) })
	<-d.done
}
