// Package etcdauth defines who may read and write what of one weft cluster
// in etcd, as etcd users and roles, and puts that into etcd: `weftctl auth
// setup`, `auth add-node` and `auth remove-node` call it, testenv too.
//
// etcd's own RBAC enforces it: authentication on, clients present TLS
// certificates whose common name is their etcd user (etcd maps the CN to
// the user when it verifies client certificates), and every user has no
// password, so a certificate is the only way in. The roles' key ranges are
// built from the cluster's key prefix, so clusters that share one etcd
// under different prefixes get separate users and roles:
//
//	<p>-controller       readwrite the whole prefix
//	<p>-reader           read the whole prefix (operators' weftctl nodes,
//	                     events, status, check, config get)
//	<p>-config-writer    write <prefix>/desired/config (weftctl config set)
//	<p>-node-<name>      read config, head, events/, nodes/, subnets/;
//	                     readwrite registrations/<name> and status/<name>
//
// where <p> is the prefix without its leading "/" ("weft" for /weft).
// Users: <p>-controller, <p>-reader, <p>-operator (reader and
// config-writer), <p>-node-<name> (its node role), and root (etcd
// requires it before authentication can be turned on).
package etcdauth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/proto/keys"
)

// Root is etcd's administrator, user and role: only it changes users,
// roles and authentication once authentication is on.
const Root = "root"

// Names are the etcd user and role names of one cluster.
type Names struct{ tag string }

// NamesFor returns the names for l's prefix.
func NamesFor(l keys.Layout) Names {
	return Names{tag: strings.TrimPrefix(keys.New(l.Prefix).Prefix, "/")}
}

// Controller is the controller's user and role.
func (n Names) Controller() string { return n.tag + "-controller" }

// Reader is the read-only role, and a user with only that role.
func (n Names) Reader() string { return n.tag + "-reader" }

// ConfigWriter is the role that may write the desired config.
func (n Names) ConfigWriter() string { return n.tag + "-config-writer" }

// Operator is the user with Reader and ConfigWriter: weftctl's everyday
// identity.
func (n Names) Operator() string { return n.tag + "-operator" }

// Node is node name's user and role.
func (n Names) Node(name string) string { return n.tag + "-node-" + name }

// Perm is one permission of a role: Key alone, or the range [Key, End).
type Perm struct {
	Type clientv3.PermissionType
	Key  string
	End  string
}

func (p Perm) String() string {
	t := strings.ToLower(authpb.Permission_Type_name[int32(p.Type)])
	if p.End == "" {
		return t + " " + p.Key
	}
	return fmt.Sprintf("%s [%s, %s)", t, p.Key, p.End)
}

func prefix(t clientv3.PermissionType, key string) Perm {
	return Perm{Type: t, Key: key, End: clientv3.GetPrefixRangeEnd(key)}
}

func single(t clientv3.PermissionType, key string) Perm { return Perm{Type: t, Key: key} }

var (
	read      = clientv3.PermissionType(clientv3.PermRead)
	write     = clientv3.PermissionType(clientv3.PermWrite)
	readWrite = clientv3.PermissionType(clientv3.PermReadWrite)
)

// Role is a role and its permissions.
type Role struct {
	Name  string
	Perms []Perm
}

// User is a user and its roles.
type User struct {
	Name  string
	Roles []string
}

// ClusterRoles are the controller's and the operators' roles.
func ClusterRoles(l keys.Layout) []Role {
	n := NamesFor(l)
	return []Role{
		{n.Controller(), []Perm{prefix(readWrite, l.Root())}},
		{n.Reader(), []Perm{prefix(read, l.Root())}},
		{n.ConfigWriter(), []Perm{single(write, l.DesiredConfig())}},
	}
}

// ClusterUsers are the controller's and the operators' users.
func ClusterUsers(l keys.Layout) []User {
	n := NamesFor(l)
	return []User{
		{n.Controller(), []string{n.Controller()}},
		{n.Reader(), []string{n.Reader()}},
		{n.Operator(), []string{n.ConfigWriter(), n.Reader()}},
	}
}

// NodeRole is what the agent of node name needs: its list and watch
// (config, head, events, nodes; subnets for inspection) and its two
// leased keys. Granting and keeping a lease needs no permission; revoking
// one, or renewing it, needs write permission on every key attached, so a
// node can neither revoke nor keep alive another node's lease.
func NodeRole(l keys.Layout, name string) Role {
	return Role{NamesFor(l).Node(name), []Perm{
		single(read, l.Config()),
		single(read, l.Head()),
		prefix(read, l.Events()),
		prefix(read, l.Nodes()),
		prefix(read, l.Subnets()),
		single(readWrite, l.Registration(name)),
		single(readWrite, l.Status(name)),
	}}
}

// NodeUser is node name's user.
func NodeUser(l keys.Layout, name string) User {
	n := NamesFor(l).Node(name)
	return User{n, []string{n}}
}

// Change is one line of what a call found or did.
type Change struct {
	// Subject is "role NAME", "user NAME" or "auth".
	Subject string
	// Did is what happened: "created", "granted ...", "unchanged", ...
	Did string
	// Changed is false when the subject already was as it should be.
	Changed bool
}

func (c Change) String() string { return c.Subject + ": " + c.Did }

// Report is every Change of one call, in order.
type Report []Change

// Changed reports whether anything in etcd changed.
func (r Report) Changed() bool {
	return slices.ContainsFunc(r, func(c Change) bool { return c.Changed })
}

// Setup makes etcd's users and roles those of the cluster (ClusterRoles,
// ClusterUsers, root, and a node role and user for each of nodes), then
// turns authentication on. What already is as it should be is left alone
// and reported unchanged, so running it twice changes nothing. A weft role
// with a permission it should not have loses it; a weft user with a role
// it should not have loses it.
//
// Before authentication is on any client may call it; after, only root
// (a certificate with CN root). Errors name the user or role at fault.
func Setup(ctx context.Context, c *clientv3.Client, l keys.Layout, nodes []string) (Report, error) {
	var rep Report
	add := func(ch Change, err error) error {
		if err != nil {
			return err
		}
		rep = append(rep, ch)
		return nil
	}
	if err := add(ensureRootRole(ctx, c)); err != nil {
		return rep, err
	}
	if err := add(ensureUser(ctx, c, User{Root, []string{Root}}, false)); err != nil {
		return rep, err
	}
	for _, r := range ClusterRoles(l) {
		if err := add(ensureRole(ctx, c, r)); err != nil {
			return rep, err
		}
	}
	for _, u := range ClusterUsers(l) {
		if err := add(ensureUser(ctx, c, u, true)); err != nil {
			return rep, err
		}
	}
	for _, name := range nodes {
		r, err := AddNode(ctx, c, l, name)
		rep = append(rep, r...)
		if err != nil {
			return rep, err
		}
	}
	st, err := c.AuthStatus(ctx)
	if err != nil {
		return rep, fmt.Errorf("read auth status: %w", err)
	}
	if st.Enabled {
		rep = append(rep, Change{"auth", "enabled already", false})
		return rep, nil
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		return rep, fmt.Errorf("enable auth: %w", err)
	}
	rep = append(rep, Change{"auth", "enabled", true})
	return rep, nil
}

// AddNode makes node name's role and user (NodeRole, NodeUser), or
// brings them back to what they should be. It works with authentication
// on or off.
func AddNode(ctx context.Context, c *clientv3.Client, l keys.Layout, name string) (Report, error) {
	if err := keys.ValidName(name); err != nil {
		return nil, fmt.Errorf("node name %q: %w", name, err)
	}
	var rep Report
	ch, err := ensureRole(ctx, c, NodeRole(l, name))
	if err != nil {
		return nil, err
	}
	rep = append(rep, ch)
	ch, err = ensureUser(ctx, c, NodeUser(l, name), true)
	if err != nil {
		return rep, err
	}
	return append(rep, ch), nil
}

// RemoveNode deletes node name's user and role, then its registration
// and status keys. The node's certificate then authenticates as nobody:
// every request of it is refused, so it cannot write them again, and the
// controller starts the node's grace period at once instead of when the
// keys' lease would have expired (a lease's TTL is the agent's choice and
// may be as long as etcd grants). The keys are deleted, not their lease
// revoked: a node may attach its keys to any lease, another's too.
func RemoveNode(ctx context.Context, c *clientv3.Client, l keys.Layout, name string) (Report, error) {
	if err := keys.ValidName(name); err != nil {
		return nil, fmt.Errorf("node name %q: %w", name, err)
	}
	n := NamesFor(l).Node(name)
	var rep Report
	switch _, err := c.UserDelete(ctx, n); {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		rep = append(rep, Change{"user " + n, "absent already", false})
	case err != nil:
		return rep, fmt.Errorf("delete user %s: %w", n, err)
	default:
		rep = append(rep, Change{"user " + n, "deleted", true})
	}
	switch _, err := c.RoleDelete(ctx, n); {
	case errors.Is(err, rpctypes.ErrRoleNotFound):
		rep = append(rep, Change{"role " + n, "absent already", false})
	case err != nil:
		return rep, fmt.Errorf("delete role %s: %w", n, err)
	default:
		rep = append(rep, Change{"role " + n, "deleted", true})
	}
	for _, k := range []string{l.Registration(name), l.Status(name)} {
		r, err := c.Delete(ctx, k)
		switch {
		case err != nil:
			return rep, fmt.Errorf("delete %s: %w", k, err)
		case r.Deleted == 0:
			rep = append(rep, Change{"key " + k, "absent already", false})
		default:
			rep = append(rep, Change{"key " + k, "deleted", true})
		}
	}
	return rep, nil
}

// ensureRootRole makes etcd's root role. Its permissions are implicit
// (everything); weft never grants or revokes any.
func ensureRootRole(ctx context.Context, c *clientv3.Client) (Change, error) {
	s := "role " + Root
	_, err := c.RoleGet(ctx, Root)
	if err == nil {
		return Change{s, "exists", false}, nil
	}
	if !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return Change{}, fmt.Errorf("read role %s: %w", Root, err)
	}
	if _, err := c.RoleAdd(ctx, Root); err != nil {
		return Change{}, fmt.Errorf("add role %s: %w", Root, err)
	}
	return Change{s, "created", true}, nil
}

func ensureRole(ctx context.Context, c *clientv3.Client, r Role) (Change, error) {
	s := "role " + r.Name
	var have []Perm
	resp, err := c.RoleGet(ctx, r.Name)
	created := false
	switch {
	case errors.Is(err, rpctypes.ErrRoleNotFound):
		if _, err := c.RoleAdd(ctx, r.Name); err != nil {
			return Change{}, fmt.Errorf("add role %s: %w", r.Name, err)
		}
		created = true
	case err != nil:
		return Change{}, fmt.Errorf("read role %s: %w", r.Name, err)
	default:
		for _, p := range resp.Perm {
			have = append(have, Perm{Type: clientv3.PermissionType(p.PermType), Key: string(p.Key), End: string(p.RangeEnd)})
		}
	}
	var did []string
	for _, p := range have {
		if !slices.Contains(r.Perms, p) {
			if _, err := c.RoleRevokePermission(ctx, r.Name, p.Key, p.End); err != nil {
				return Change{}, fmt.Errorf("revoke %s from role %s: %w", p, r.Name, err)
			}
			did = append(did, "revoked "+p.String())
		}
	}
	for _, p := range r.Perms {
		if !slices.Contains(have, p) {
			if _, err := c.RoleGrantPermission(ctx, r.Name, p.Key, p.End, p.Type); err != nil {
				return Change{}, fmt.Errorf("grant %s to role %s: %w", p, r.Name, err)
			}
			if !created {
				did = append(did, "granted "+p.String())
			}
		}
	}
	perms := make([]string, len(r.Perms))
	for i, p := range r.Perms {
		perms[i] = p.String()
	}
	switch {
	case created:
		return Change{s, "created: " + strings.Join(perms, "; "), true}, nil
	case len(did) > 0:
		return Change{s, strings.Join(did, "; "), true}, nil
	}
	return Change{s, "unchanged: " + strings.Join(perms, "; "), false}, nil
}

// ensureUser makes u with its roles; exact also revokes roles u should
// not have (weft's users), root keeps whatever else it was given.
func ensureUser(ctx context.Context, c *clientv3.Client, u User, exact bool) (Change, error) {
	s := "user " + u.Name
	var have []string
	resp, err := c.UserGet(ctx, u.Name)
	created := false
	switch {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		// No password: only a client certificate with this CN is this user.
		if _, err := c.UserAddWithOptions(ctx, u.Name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			return Change{}, fmt.Errorf("add user %s: %w", u.Name, err)
		}
		created = true
	case err != nil:
		return Change{}, fmt.Errorf("read user %s: %w", u.Name, err)
	default:
		have = resp.Roles
	}
	var did []string
	for _, r := range have {
		if exact && !slices.Contains(u.Roles, r) {
			if _, err := c.UserRevokeRole(ctx, u.Name, r); err != nil {
				return Change{}, fmt.Errorf("revoke role %s from user %s: %w", r, u.Name, err)
			}
			did = append(did, "revoked role "+r)
		}
	}
	for _, r := range u.Roles {
		if !slices.Contains(have, r) {
			if _, err := c.UserGrantRole(ctx, u.Name, r); err != nil {
				return Change{}, fmt.Errorf("grant role %s to user %s: %w", r, u.Name, err)
			}
			if !created {
				did = append(did, "granted role "+r)
			}
		}
	}
	roles := strings.Join(u.Roles, ", ")
	switch {
	case created:
		return Change{s, "created (no password; certificate CN " + u.Name + "), roles " + roles, true}, nil
	case len(did) > 0:
		return Change{s, strings.Join(did, "; "), true}, nil
	}
	return Change{s, "unchanged, roles " + roles, false}, nil
}
