// Package pki makes the cluster's certificate authority and the certificates
// of its parts (agents, the CLI, etcd), and builds mutual-TLS configurations
// from them. Every connection in COAT (CLI to agent, agent to agent, anything
// to etcd) is mutual TLS with this CA, so the checkpoint stream, which holds
// process memory, never crosses the network in clear and nobody without a
// certificate from the cluster CA can list, run, checkpoint or fetch.
//
// # Roles and authorization (design note)
//
// A certificate says who its holder is and what it may do: the subject's
// common name is the party's name and its organization its role:
//
//   - O=coat:admin: the CLI (and operators' tools). May do everything, on
//     every agent and in etcd (etcd user of the same name with role root).
//   - O=coat:host: one agent, CN = its host name (the name it registers
//     under), with its underlay IP as IP SAN. It serves its own containers
//     only: it may call another agent's /v1/incoming/NAME/* only while the
//     store records a migration of NAME from it to that agent, and
//     /v1/tunnel/NAME/* only for a page tunnel that agent opened for it,
//     /v1/outgoing/NAME/image only while the store records a migration
//     of NAME from that agent to it (it copies the image it lacks);
//     never /v1/containers or /v1/images (run, rm, logs, migrate, import).
//     internal/authz decides; the agent's middleware asks it. A host
//     certificate is good only from the host's underlay IP (its IP SANs):
//     agents refuse a host caller from another address, and dial their
//     peers from their underlay IP. (etcd cannot check this per user.)
//   - O=coat:etcd: an etcd member. Its certificate serves clients and is
//     also the client side of the member-to-member links, so it carries
//     both usages; agents refuse it as a caller.
//   - O=coat:client: a client device on the overlay (`coat client up`),
//     CN = its client name; client usage only, no address (it roams). In
//     etcd it reads hosts/ and config/ and writes its own record,
//     clients/NAME, exactly; agents refuse it as a caller.
//
// Client and server usages are separate for hosts and admins: a host has
// NAME.crt (server: ExtKeyUsage serverAuth, DNS NAME, its IPs) and
// NAME-client.crt (client: clientAuth only); an admin has NAME.crt with
// clientAuth only. crypto/tls and etcd check the usage, so a server
// certificate taken from a host cannot log in anywhere, and a client
// certificate cannot impersonate a server.
//
// etcd maps a client certificate to the user named by its CN (it ignores O),
// so names are unique across roles in one PKI directory (Issue refuses a
// name held by a certificate of another role, and "root"), and a revoked
// name is never issued again (Issue refuses it: choose a new name).
//
// etcd permissions (internal/store/auth.go) are per prefix. A host may
// write its own registration (hosts/NAME, exactly), and the shared
// prefixes containers/, ips/, locks/, migrations/ and follows/; it may
// read /coat/. It may not write another host's registration, clients/,
// revocations/, anything outside /coat/, nor manage users, roles or
// members. The shared prefixes
// cannot be narrowed per host with etcd's prefix permissions: records are
// keyed by container name, ownership moves with a migration (the source
// writes the destination's record at commit, the destination writes it
// when it commits a recovered migration or stops a failed post-copy), and
// any name may be claimed by the agent that runs a new container. So a
// stolen host key (used from the host's own address) can still rewrite
// container and migration records in etcd directly, and with forged
// records (container Y "on" itself and migrating to edge-1, a migration
// record from itself to edge-1) it could then drive edge-1's prepare for
// Y, whose IP and MAC edge-1 reads from the forged record. The agents'
// checks close the direct paths (the reviewer's: rm/run/migrate with a
// host certificate, prepare with a record in the body, prepare or data
// without a recorded migration, calls from another address); they cannot
// tell a forged record from a real one. What the key cannot touch is
// another host's registration (its underlay IP, the VTEP every agent
// forwards to), the revocations, etcd's users and roles, and anything
// outside /coat/. Closing the rest needs records keyed by owner (e.g.
// containers/HOST/NAME, writable by HOST only, with the handover at
// commit split between source and destination and name claims under a
// prefix only admins write): a change of the store layout and of the
// commit, left for after the migration-protocol work now under way.
//
// Revocation: `coat init --revoke NAME` records NAME's serials in
// revoked.json here, writes them under /coat/revoked/NAME in etcd (only
// admins may), and deletes NAME's etcd user and role, so etcd refuses the
// certificate at once. Agents follow /coat/revoked/ and refuse a revoked
// certificate in the TLS handshake and on every request.
//
// Files in a PKI directory (0700, keys 0600): ca.crt, ca.key, NAME.crt,
// NAME.key, for hosts also NAME-client.crt and NAME-client.key, and
// revoked.json once something was revoked.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Role is what a certificate's holder may do: its subject's organization.
type Role string

// The roles.
const (
	RoleAdmin Role = "coat:admin"
	RoleHost  Role = "coat:host"
	RoleEtcd  Role = "coat:etcd"
	// RoleClient: a client device on the overlay (coat client up). In
	// etcd it reads the hosts and the configuration and writes its own
	// client record only; agents refuse it as a caller.
	RoleClient Role = "coat:client"
)

// EnsureCA creates the CA in dir unless it exists.
func EnsureCA(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "coat cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(dir, "ca", der, key)
}

// Issue makes NAME's certificates in dir for role, signed by the CA there:
//
//   - admin: NAME.crt/key, client use only;
//   - host: NAME.crt/key for its server (DNS NAME and localhost, the given
//     IPs and 127.0.0.1) and NAME-client.crt/key for its calls (the given
//     IPs as IP SANs);
//   - etcd: NAME.crt/key, server and client use (member links use it both
//     ways), DNS NAME and localhost, the given IPs and 127.0.0.1.
//
// Certificates that exist with this role are kept; ones from before roles
// (no organization) are replaced. A name held by another role, the name
// "root" (etcd's superuser) and a revoked name are refused.
func Issue(dir, name string, role Role, ips []net.IP) error {
	switch role {
	case RoleAdmin, RoleHost, RoleEtcd, RoleClient:
	default:
		return fmt.Errorf("issue %s: unknown role %q", name, role)
	}
	if name == "" || name == "root" || name == "ca" || filepath.Base(name) != name {
		return fmt.Errorf("issue %q: reserved or invalid name: choose another", name)
	}
	revoked, err := Revocations(dir)
	if err != nil {
		return err
	}
	for _, r := range revoked {
		if r.Name == name {
			return fmt.Errorf("issue %s: the name was revoked on %s and is not issued again (etcd knows parties by name): choose a new name", name, r.At.Format(time.RFC3339))
		}
	}
	if old, err := ReadCert(filepath.Join(dir, name+".crt")); err == nil {
		have := Role("")
		if len(old.Subject.Organization) > 0 {
			have = Role(old.Subject.Organization[0])
		}
		switch {
		case have == role && (role != RoleHost || exists(filepath.Join(dir, name+"-client.crt"))):
			return nil
		case have != "" && have != role:
			return fmt.Errorf("issue %s as %s: %s already holds a certificate as %s: choose another name", name, role, name, have)
		}
		// From before roles, or half a host's pair: replaced below.
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	mine := append([]net.IP(nil), ips...)
	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{string(role)}},
		DNSNames:    []string{name, "localhost"},
		IPAddresses: append(slices.Clone(mine), net.IPv4(127, 0, 0, 1)),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	switch role {
	case RoleAdmin, RoleClient:
		client := &x509.Certificate{
			Subject:     pkix.Name{CommonName: name, Organization: []string{string(role)}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		return issueOne(dir, name, client, ca, caKey)
	case RoleEtcd:
		server.ExtKeyUsage = append(server.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		return issueOne(dir, name, server, ca, caKey)
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{string(role)}},
		IPAddresses: mine,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issueOne(dir, name+"-client", client, ca, caKey); err != nil {
		return err
	}
	return issueOne(dir, name, server, ca, caKey)
}

func issueOne(dir, file string, tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().AddDate(2, 0, 0)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(dir, file, der, key)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// Identity is who a verified certificate names.
type Identity struct {
	Name   string
	Role   Role
	Serial string   // hex
	IPs    []net.IP // the addresses it is bound to (a host's underlay IP)
}

// Identify reads the name and role of a certificate (already verified
// against the CA by TLS). A certificate without a known role is an error.
func Identify(c *x509.Certificate) (Identity, error) {
	id := Identity{Name: c.Subject.CommonName, Serial: SerialOf(c), IPs: c.IPAddresses}
	if len(c.Subject.Organization) == 1 {
		id.Role = Role(c.Subject.Organization[0])
	}
	switch id.Role {
	case RoleAdmin, RoleHost, RoleEtcd, RoleClient:
	default:
		return id, fmt.Errorf("certificate %q (serial %s) carries no COAT role: issue it again with `coat init` (or `coat lab up`)", id.Name, id.Serial)
	}
	if id.Name == "" {
		return id, fmt.Errorf("certificate with serial %s has no common name", id.Serial)
	}
	return id, nil
}

// SerialOf is a certificate's serial number in hex.
func SerialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// ReadCert reads one PEM certificate.
func ReadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: not a PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// Files names the certificates, keys and CA of one party.
type Files struct {
	Cert, Key string // server side (admins: their only certificate)
	// ClientCert and ClientKey are a host's client certificate; when the
	// file is missing, ClientConfig uses Cert (admins, etcd members).
	ClientCert, ClientKey string
	CA                    string
}

// FilesFor returns the paths of NAME's files in dir.
func FilesFor(dir, name string) Files {
	return Files{
		Cert:       filepath.Join(dir, name+".crt"),
		Key:        filepath.Join(dir, name+".key"),
		ClientCert: filepath.Join(dir, name+"-client.crt"),
		ClientKey:  filepath.Join(dir, name+"-client.key"),
		CA:         filepath.Join(dir, "ca.crt"),
	}
}

// Client returns the files of the certificate used to call others.
func (f Files) Client() Files {
	if f.ClientCert != "" && exists(f.ClientCert) {
		f.Cert, f.Key = f.ClientCert, f.ClientKey
	}
	return f
}

// ServerConfig requires and verifies client certificates from the CA.
func (f Files) ServerConfig() (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ClientConfig presents our client certificate and trusts only the CA.
func (f Files) ClientConfig() (*tls.Config, error) {
	cert, pool, err := f.Client().load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

func (f Files) load() (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load certificate %s: %w (run `coat init` or `coat lab up` to create the cluster PKI)", f.Cert, err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, fmt.Errorf("no certificate in %s", f.CA)
	}
	return cert, pool, nil
}

// Revocation is one revoked party: its name and the serials of its
// certificates.
type Revocation struct {
	Name    string    `json:"name"`
	Serials []string  `json:"serials"`
	At      time.Time `json:"at"`
}

const revokedFile = "revoked.json"

// Revocations lists what was revoked in dir.
func Revocations(dir string) ([]Revocation, error) {
	b, err := os.ReadFile(filepath.Join(dir, revokedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Revocation
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, revokedFile), err)
	}
	return out, nil
}

// Revoke records name's certificates in dir as revoked and returns the
// record (the existing one if it was revoked before). The certificate
// files stay, for the record.
func Revoke(dir, name string) (Revocation, error) {
	all, err := Revocations(dir)
	if err != nil {
		return Revocation{}, err
	}
	for _, r := range all {
		if r.Name == name {
			return r, nil
		}
	}
	r := Revocation{Name: name, At: time.Now().UTC()}
	for _, f := range []string{name + ".crt", name + "-client.crt"} {
		c, err := ReadCert(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Revocation{}, err
		}
		r.Serials = append(r.Serials, SerialOf(c))
	}
	if len(r.Serials) == 0 {
		return Revocation{}, fmt.Errorf("revoke %s: no certificate %s.crt in %s", name, name, dir)
	}
	b, _ := json.MarshalIndent(append(all, r), "", "  ")
	tmp := filepath.Join(dir, revokedFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return Revocation{}, err
	}
	return r, os.Rename(tmp, filepath.Join(dir, revokedFile))
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, nil, fmt.Errorf("read CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, nil, fmt.Errorf("read CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, errors.New("CA files are not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	return cert, key, err
}

func writePair(dir, name string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

// Parties lists the names of the admin and host certificates in dir.
func Parties(dir string) (admins, hosts []string, err error) {
	by, err := PartiesByRole(dir)
	return by[RoleAdmin], by[RoleHost], err
}

// PartiesByRole lists the names of the certificates in dir by role.
func PartiesByRole(dir string) (map[Role][]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil {
		return nil, err
	}
	out := map[Role][]string{}
	for _, f := range files {
		base := filepath.Base(f)
		if base == "ca.crt" || strings.HasSuffix(base, "-client.crt") {
			continue
		}
		c, err := ReadCert(f)
		if err != nil {
			return nil, err
		}
		id, err := Identify(c)
		if err != nil {
			continue // from before roles: not a party until issued again
		}
		out[id.Role] = append(out[id.Role], id.Name)
	}
	return out, nil
}

// CheckHost checks that f holds host name's certificates (server and
// client), the client one bound to underlay, so that an agent started with
// the wrong files or flags says so at once instead of being refused by
// every peer and by etcd.
func (f Files) CheckHost(name string, underlay net.IP) error {
	for _, file := range []string{f.Cert, f.ClientCert} {
		c, err := ReadCert(file)
		if err != nil {
			return fmt.Errorf("%w (issue host certificates with `coat init --issue %s=%s`)", err, name, underlay)
		}
		id, err := Identify(c)
		if err != nil {
			return err
		}
		if id.Role != RoleHost || id.Name != name {
			return fmt.Errorf("%s is the certificate of %s (%s), not of host %s: issue one with `coat init --issue %s=%s`", file, id.Name, id.Role, name, name, underlay)
		}
		if file == f.ClientCert && !slices.ContainsFunc(c.IPAddresses, underlay.Equal) {
			return fmt.Errorf("%s is bound to %v, not to the underlay IP %s: peers would refuse this agent's calls; issue it again for %s=%s (revoke the old one)", file, c.IPAddresses, underlay, name, underlay)
		}
	}
	return nil
}
