package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/pki"
)

// Access control in etcd (see the design note in internal/pki). etcd maps
// a client certificate's common name to the user of that name:
//
//	root, and every admin   role root: everything
//	host NAME               role host-NAME:
//	                          read      PREFIX (all of /coat/)
//	                          readwrite PREFIXhosts/NAME (that key only)
//	                          readwrite PREFIXcontainers/, ips/, locks/,
//	                                    migrations/, follows/ (shared: see
//	                                    the note)
//	client NAME             role client-NAME:
//	                          read      PREFIXhosts/, PREFIXconfig/
//	                          readwrite PREFIXclients/NAME (that key only)
//	revoked NAME            no user, no role: etcd refuses it (a revoked
//	                        client's record and overlay IP go too)
//
// Layout under the prefix, besides etcd.go's:
//
//	revoked/<name>     pki.Revocation JSON, written by admins only

// AuthPolicy is who may use etcd, and who may no longer.
type AuthPolicy struct {
	Admins  []string
	Hosts   []string
	Clients []string
	Revoked []pki.Revocation
}

func hostRole(name string) string   { return "host-" + name }
func clientRole(name string) string { return "client-" + name }

// permission is one key or prefix (end set) a role may use.
type permission struct {
	key, end string
	t        clientv3.PermissionType
}

// grant gives role the permissions perms, creating it if needed.
func (s *Etcd) grant(ctx context.Context, role string, perms []permission) error {
	if _, err := s.cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("etcd role %s: %w", role, err)
	}
	for _, pm := range perms {
		if _, err := s.cli.RoleGrantPermission(ctx, role, pm.key, pm.end, pm.t); err != nil {
			return fmt.Errorf("etcd role %s: grant %s: %w", role, pm.key, err)
		}
	}
	return nil
}

// clientPerms: a client reads the hosts (its flood list) and the
// configuration (the overlay's prefix), and writes its own record.
func (s *Etcd) clientPerms(name string) []permission {
	read := clientv3.PermissionType(clientv3.PermRead)
	return []permission{
		{s.prefix + "hosts/", clientv3.GetPrefixRangeEnd(s.prefix + "hosts/"), read},
		{s.prefix + "config/", clientv3.GetPrefixRangeEnd(s.prefix + "config/"), read},
		{s.clientKey(name), "", clientv3.PermissionType(clientv3.PermReadWrite)},
	}
}

// SetupAuth brings etcd's users and roles in line with p, records the
// revocations under revoked/, deletes revoked hosts' registrations and
// turns authentication on. It is idempotent; the client must be an admin
// (or etcd's authentication still off).
func (s *Etcd) SetupAuth(ctx context.Context, p AuthPolicy) error {
	revoked := map[string]bool{}
	for _, r := range p.Revoked {
		revoked[r.Name] = true
	}
	ignore := func(err error, ok ...error) error {
		for _, o := range ok {
			if errors.Is(err, o) {
				return nil
			}
		}
		return err
	}
	user := func(name, role string) error {
		if _, err := s.cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); ignore(err, rpctypes.ErrUserAlreadyExist) != nil {
			return fmt.Errorf("etcd user %s: %w", name, err)
		}
		// Exactly this role: drop any other a user of this name was given.
		if u, err := s.cli.UserGet(ctx, name); err == nil {
			for _, r := range u.Roles {
				if r != role {
					if _, err := s.cli.UserRevokeRole(ctx, name, r); ignore(err, rpctypes.ErrRoleNotGranted) != nil {
						return fmt.Errorf("etcd user %s: revoke role %s: %w", name, r, err)
					}
				}
			}
		}
		if _, err := s.cli.UserGrantRole(ctx, name, role); err != nil {
			return fmt.Errorf("etcd user %s: grant role %s: %w", name, role, err)
		}
		return nil
	}
	for _, n := range append([]string{"root"}, p.Admins...) {
		if revoked[n] {
			continue
		}
		if err := user(n, "root"); err != nil {
			return err
		}
	}
	for _, h := range p.Hosts {
		if revoked[h] {
			continue
		}
		role := hostRole(h)
		if _, err := s.cli.RoleAdd(ctx, role); ignore(err, rpctypes.ErrRoleAlreadyExist) != nil {
			return fmt.Errorf("etcd role %s: %w", role, err)
		}
		perms := []struct {
			key, end string
			t        clientv3.PermissionType
		}{
			{s.prefix, clientv3.GetPrefixRangeEnd(s.prefix), clientv3.PermissionType(clientv3.PermRead)},
			{s.hostKey(h), "", clientv3.PermissionType(clientv3.PermReadWrite)},
		}
		for _, shared := range []string{"containers/", "ips/", "locks/", "migrations/", "follows/"} {
			k := s.prefix + shared
			perms = append(perms, struct {
				key, end string
				t        clientv3.PermissionType
			}{k, clientv3.GetPrefixRangeEnd(k), clientv3.PermissionType(clientv3.PermReadWrite)})
		}
		for _, pm := range perms {
			if _, err := s.cli.RoleGrantPermission(ctx, role, pm.key, pm.end, pm.t); err != nil {
				return fmt.Errorf("etcd role %s: grant %s: %w", role, pm.key, err)
			}
		}
		if err := user(h, role); err != nil {
			return err
		}
	}
	for _, c := range p.Clients {
		if revoked[c] {
			continue
		}
		if err := s.grant(ctx, clientRole(c), s.clientPerms(c)); err != nil {
			return err
		}
		if err := user(c, clientRole(c)); err != nil {
			return err
		}
	}
	for _, r := range p.Revoked {
		if err := s.dropClient(ctx, r.Name); err != nil {
			return fmt.Errorf("etcd: client record of revoked %s: %w", r.Name, err)
		}
		if _, err := s.cli.RoleDelete(ctx, clientRole(r.Name)); ignore(err, rpctypes.ErrRoleNotFound) != nil {
			return fmt.Errorf("etcd: delete client role of revoked %s: %w", r.Name, err)
		}
		if _, err := s.cli.UserDelete(ctx, r.Name); ignore(err, rpctypes.ErrUserNotFound) != nil {
			return fmt.Errorf("etcd: delete revoked user %s: %w", r.Name, err)
		}
		if _, err := s.cli.RoleDelete(ctx, hostRole(r.Name)); ignore(err, rpctypes.ErrRoleNotFound) != nil {
			return fmt.Errorf("etcd: delete role of revoked %s: %w", r.Name, err)
		}
		b, _ := json.Marshal(r)
		if _, err := s.cli.Put(ctx, s.revokedKey(r.Name), string(b)); err != nil {
			return fmt.Errorf("etcd: record revocation of %s: %w", r.Name, err)
		}
		if _, err := s.cli.Delete(ctx, s.hostKey(r.Name)); err != nil {
			return fmt.Errorf("etcd: delete revoked host %s: %w", r.Name, err)
		}
	}
	if _, err := s.cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("etcd: enable authentication: %w", err)
	}
	return nil
}

func (s *Etcd) revokedKey(n string) string { return s.prefix + "revoked/" + n }

// Revocations lists the revoked certificates recorded in etcd.
func (s *Etcd) Revocations(ctx context.Context) ([]pki.Revocation, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"revoked/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	var out []pki.Revocation
	for _, kv := range resp.Kvs {
		var r pki.Revocation
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// PolicyFromPKI is the access policy of the certificates in a PKI
// directory: its admins, its hosts and its revocations.
func PolicyFromPKI(dir string) (AuthPolicy, error) {
	by, err := pki.PartiesByRole(dir)
	if err != nil {
		return AuthPolicy{}, err
	}
	revoked, err := pki.Revocations(dir)
	if err != nil {
		return AuthPolicy{}, err
	}
	return AuthPolicy{Admins: by[pki.RoleAdmin], Hosts: by[pki.RoleHost], Clients: by[pki.RoleClient], Revoked: revoked}, nil
}

// SetupAuthFromPKI connects to etcd at endpoints as the admin certificate
// admin of dir and applies PolicyFromPKI(dir) (SetupAuth).
func SetupAuthFromPKI(ctx context.Context, endpoints []string, dir, admin string) error {
	p, err := PolicyFromPKI(dir)
	if err != nil {
		return err
	}
	for _, r := range p.Revoked {
		if r.Name == admin {
			return fmt.Errorf("%s is revoked: set etcd up with another admin certificate (--cert-name; `coat init --issue-admin NAME` makes one)", admin)
		}
	}
	tc, err := pki.FilesFor(dir, admin).ClientConfig()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s := NewEtcd(cli, "/coat/", nil)
	if err := s.SetupAuth(ctx, p); err != nil {
		return fmt.Errorf("%w (the certificate %s must be an admin's: etcd user of that name with role root)", err, admin)
	}
	return nil
}

// RequireAuth fails if etcd's access control is off: then every
// certificate of the cluster CA could rewrite every record.
func (s *Etcd) RequireAuth(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := s.cli.AuthStatus(ctx)
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return nil // only admins may ask: it is on
	}
	if err != nil {
		return fmt.Errorf("etcd authentication status: %w", err)
	}
	if !st.Enabled {
		return errors.New("etcd's access control is off: any certificate of the cluster CA could rewrite every record")
	}
	return nil
}
