package pod

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"

	"github.com/podmesh/podmesh/launcher/initproc"
)

// DefaultUID and DefaultGID are who a service's programs (the app and its healthcheck) run
// as when its compose file says no `user:`: nobody. Pods share the host's filesystem, so
// an app running as uid 0, even without any capability, could read and write everything
// root owns (/etc/shadow, /etc itself); as nobody it reaches what every user may. The
// directories and files an app needs (its program, working_dir, volumes) must be readable
// by it, or the file must name a user that can read them (`user: root` restores uid 0).
const (
	DefaultUID = 65534
	DefaultGID = 65534
)

// ResolveUser turns a compose `user` ("", "uid", "uid:gid", "name", "name:group") into
// ids, from the host's user database (pods share the host's filesystem). A user without a
// group takes its primary group and supplementary groups from the database; a numeric uid
// unknown there gets gid 0, as Docker does. "" means DefaultUID:DefaultGID.
func ResolveUser(s string) (*initproc.User, error) {
	if s == "" {
		return &initproc.User{UID: DefaultUID, GID: DefaultGID, Groups: []uint32{DefaultGID}}, nil
	}
	name, group, hasGroup := strings.Cut(s, ":")
	u := &initproc.User{}
	if id, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.UID = uint32(id)
		if pw, err := user.LookupId(name); err == nil {
			if err := fill(u, pw); err != nil {
				return nil, err
			}
		}
	} else {
		pw, err := user.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", s, err)
		}
		id, err := strconv.ParseUint(pw.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %q: uid %q: %w", s, pw.Uid, err)
		}
		u.UID = uint32(id)
		if err := fill(u, pw); err != nil {
			return nil, err
		}
	}
	if hasGroup {
		gid, err := strconv.ParseUint(group, 10, 32)
		if err != nil {
			g, lerr := user.LookupGroup(group)
			if lerr != nil {
				return nil, fmt.Errorf("user %q: group %q: %w", s, group, lerr)
			}
			if gid, err = strconv.ParseUint(g.Gid, 10, 32); err != nil {
				return nil, fmt.Errorf("user %q: gid %q: %w", s, g.Gid, err)
			}
		}
		u.GID = uint32(gid)
		u.Groups = []uint32{u.GID}
	}
	return u, nil
}

func fill(u *initproc.User, pw *user.User) error {
	gid, err := strconv.ParseUint(pw.Gid, 10, 32)
	if err != nil {
		return fmt.Errorf("user %s: gid %q: %w", pw.Username, pw.Gid, err)
	}
	u.GID = uint32(gid)
	u.Groups = nil
	if ids, err := pw.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				u.Groups = append(u.Groups, uint32(g))
			}
		}
	}
	if len(u.Groups) == 0 {
		u.Groups = []uint32{u.GID}
	}
	return nil
}
