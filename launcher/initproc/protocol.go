// Package initproc is the PID 1 of every pod and the launcher's handle on it.
//
// The launcher re-executes its own binary (/proc/self/exe) with argv[0] InitName in new pid,
// mount, uts and ipc namespaces, from a throw-away thread that has joined the pod's pinned
// network namespace, so the whole init process (every thread the Go runtime later creates is
// a clone of that first one) lives in the pod's network. The launcher stays the supervisor;
// init is only the parent. They talk over a SOCK_SEQPACKET socketpair passed as fd 3: one
// JSON message per packet, file descriptors (the children's stdout and stderr) as SCM_RIGHTS,
// and, on the spawned event, the child's pid as SCM_CREDENTIALS, which the kernel translates
// from the pod's pid namespace into the launcher's.
//
// Init sets the pod up (hostname, private mounts, its own /proc, a minimal /dev of its own
// (null, zero, full, random, urandom, tty, a private devpts, /dev/shm), its own /tmp, the
// generated /etc/hosts, bind volumes, everything under /sys and the host-wide parts of /proc
// (/proc/sys, /proc/sysrq-trigger…) read-only, other pods' netns pins detached),
// reaps every zombie (it owns all waits: it forks with syscall.ForkExec and never uses
// os/exec), forwards the signals it receives to its children, and starts children on request.
// A child starts as a shim (argv[0] ExecName, the same binary again) that blocks until the
// launcher has put it into its cgroup, then drops the capability bounding set, ambient and
// all other capabilities on the thread that execs, sets no_new_privs, switches user, and execs
// the real program; a close-on-exec pipe tells init whether that exec worked. When the
// launcher's end of the socket closes (the launcher died), init kills the pod: as PID 1 its
// exit takes every process of the namespace with it.
package initproc

import (
	"encoding/json"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Hidden argv[0] values that make the launcher binary act as init or as the exec shim.
const (
	InitName = "podmesh-init"
	ExecName = "podmesh-exec"
)

// maxPacket bounds one control message.
const maxPacket = 1 << 20

// Setup is what init does to the pod before it starts anything.
type Setup struct {
	Hostname string  `json:"hostname"`
	Hosts    string  `json:"hosts,omitempty"` // host path of the file bind-mounted read-only on /etc/hosts
	Mounts   []Mount `json:"mounts,omitempty"`
	// Keep lists host directories and files that stay visible in the pod although they live
	// under /tmp or /dev/shm, which the pod replaces with its own tmpfs: the project
	// directory, the pod's own files, the programs it runs.
	Keep []string `json:"keep,omitempty"`
	// Detach lists host directories whose mounts (other pods' netns pins) are detached in the
	// pod's mount namespace, so a pod does not keep another pod's namespace alive.
	Detach []string `json:"detach,omitempty"`
}

// Mount is a bind mount into the pod.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Spec is one program to run in the pod.
type Spec struct {
	Name string   `json:"name"` // unique among the pod's live children: "app", "sidecar", "health"
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir"`
	// User, when set, is the uid, gid and supplementary groups the program runs as;
	// otherwise it keeps uid 0, still without any capability.
	User *User `json:"user,omitempty"`
	// Notify, when set, gives the program one more descriptor as its fd 3: the file passed
	// as Files.Notify, the write end of a pipe on which it says it is ready (the sidecar's
	// -ready-fd 3), so that nobody polls it.
	Notify bool `json:"notify,omitempty"`
}

// User is a resolved compose `user`.
type User struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

// request ops, launcher → init.
const (
	opSetup    = "setup"    // Setup; answered by evReady or evError
	opSpawn    = "spawn"    // Spec + 2 fds (stdout, stderr); answered by evSpawned or evError
	opRelease  = "release"  // the spawned child is in its cgroup: let it exec; then evStarted
	opCancel   = "cancel"   // Name (and Pid): the spawned child could not be placed, or was given up on: kill it
	opSignal   = "signal"   // Name, Signal
	opShutdown = "shutdown" // kill everything and exit
)

// event kinds, init → launcher.
const (
	evReady   = "ready"
	evSpawned = "spawned" // Pid (in the pod), plus SCM_CREDENTIALS with the same process
	evStarted = "started" // the exec succeeded, or Err says why not
	evExited  = "exited"  // Name, Pid, Code, Signal
	evError   = "error"
)

type message struct {
	// Seq numbers a request (setup, spawn) and is repeated in its reply (ready, spawned,
	// error), so a reply that comes after its request was given up on (a spawn whose
	// deadline passed while init was still forking) is recognised as such and never taken
	// for the answer to a later request.
	Seq    uint64         `json:"seq,omitempty"`
	Op     string         `json:"op,omitempty"`
	Event  string         `json:"event,omitempty"`
	Name   string         `json:"name,omitempty"`
	Setup  *Setup         `json:"setup,omitempty"`
	Spec   *Spec          `json:"spec,omitempty"`
	Signal syscall.Signal `json:"signal,omitempty"`
	Pid    int            `json:"pid,omitempty"`
	Code   int            `json:"code,omitempty"`
	Err    string         `json:"err,omitempty"`
}

// Exit is how a child ended.
type Exit struct {
	Code   int            // exit status, when it exited
	Signal syscall.Signal // the signal that killed it, or 0
	Err    string         // it never ran: why (exec failed, could not be placed, init died)
}

// OK reports a zero exit status without signal or error.
func (e Exit) OK() bool { return e.Code == 0 && e.Signal == 0 && e.Err == "" }

func (e Exit) String() string {
	switch {
	case e.Err != "":
		return "failed: " + e.Err
	case e.Signal != 0:
		return "killed by " + unix.SignalName(e.Signal)
	default:
		return fmt.Sprintf("exited %d", e.Code)
	}
}

func send(c *net.UnixConn, m message, oob []byte) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("initproc: encode %s%s: %w", m.Op, m.Event, err)
	}
	if len(b) > maxPacket {
		return fmt.Errorf("initproc: %s%s message of %d bytes exceeds %d", m.Op, m.Event, len(b), maxPacket)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("initproc: send %s%s: %w", m.Op, m.Event, err)
	}
	return nil
}

// received is one message with what came alongside it.
type received struct {
	message
	fds  []int
	cred *syscall.Ucred
}

func recv(c *net.UnixConn, buf, oob []byte) (received, error) {
	var r received
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return r, err
	}
	if n == 0 && oobn == 0 {
		return r, errEOF
	}
	cmsgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
	if perr == nil {
		for _, cm := range cmsgs {
			if fds, err := syscall.ParseUnixRights(&cm); err == nil {
				r.fds = append(r.fds, fds...)
			} else if cred, err := syscall.ParseUnixCredentials(&cm); err == nil {
				r.cred = cred
			}
		}
	}
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		closeAll(r.fds)
		return r, fmt.Errorf("initproc: control message truncated (flags %#x)", flags)
	}
	if err := json.Unmarshal(buf[:n], &r.message); err != nil {
		closeAll(r.fds)
		return r, fmt.Errorf("initproc: decode control message: %w", err)
	}
	return r, nil
}

var errEOF = fmt.Errorf("initproc: control socket closed")

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}
