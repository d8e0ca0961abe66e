// Command podmesh-init is a pod's PID 1 and exec shim as a binary of its own. The launcher
// binary can play both parts itself (re-executed as /proc/self/exe), but it pays for every
// package it links at each start: compose-go's schema compilation alone costs tens of
// milliseconds, three times per pod start (init, the sidecar's shim, the app's shim). The
// launcher uses this binary instead when it finds it next to itself (-init-bin).
//
// It is started only by the launcher, with argv[0] podmesh-init; run by hand it does nothing.
package main

import (
	"fmt"
	"os"

	"github.com/podmesh/podmesh/launcher/initproc"
)

func main() {
	if ok, code := initproc.Main(); ok {
		os.Exit(code)
	}
	fmt.Fprintln(os.Stderr, "podmesh-init: started by the launcher only")
	os.Exit(2)
}
