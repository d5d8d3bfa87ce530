package transport

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// The roles of a client certificate: which API its holder may use.
const (
	RoleNode      = "node"      // a SuperNode, on the Fleet API
	RoleServerApp = "serverapp" // a ServerApp, on the Driver API
)

// IdentityScheme is the URI scheme of a Sepal client identity. A Sepal
// client certificate holds exactly one URI subject alternative name of the
// form sepal:ROLE:NAME, such as sepal:node:alice; flower-certs issues them.
const IdentityScheme = "sepal"

// maxNameLen bounds a client's name: it is a certificate's common name too.
const maxNameLen = 64

// Identity is who a Sepal client certificate says its holder is.
type Identity struct {
	Role string // RoleNode or RoleServerApp
	Name string // the name given to flower-certs, such as "alice"
}

// String is the identity as its certificate holds it: sepal:ROLE:NAME.
func (id Identity) String() string { return IdentityScheme + ":" + id.Role + ":" + id.Name }

// URI is the identity as a URI subject alternative name.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: IdentityScheme, Opaque: id.Role + ":" + id.Name}
}

// RoleName is the role for people: "node" or "ServerApp".
func RoleName(role string) string {
	if role == RoleServerApp {
		return "ServerApp"
	}
	return role
}

// apiOf names the SuperLink API whose clients hold certificates of role.
func apiOf(role string) string {
	if role == RoleServerApp {
		return "Driver API"
	}
	return "Fleet API"
}

// clientOf names the clients that hold certificates of role.
func clientOf(role string) string {
	if role == RoleServerApp {
		return "ServerApp (server app)"
	}
	return "SuperNode (client app)"
}

// NewIdentity returns the identity of role and name, or an error that says
// what is wrong with them: the role must be RoleNode or RoleServerApp, the
// name 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or
// digit.
func NewIdentity(role, name string) (Identity, error) {
	if role != RoleNode && role != RoleServerApp {
		return Identity{}, fmt.Errorf("unknown role %q: use %s or %s", role, RoleNode, RoleServerApp)
	}
	if err := ValidName(name); err != nil {
		return Identity{}, err
	}
	return Identity{Role: role, Name: name}, nil
}

// ValidName checks a client's name (see NewIdentity).
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("the name is empty: give one such as node-1")
	case len(name) > maxNameLen:
		return fmt.Errorf("the name %q is longer than %d characters", name, maxNameLen)
	case !alnum(name[0]):
		return fmt.Errorf("the name %q must start with a letter or a digit", name)
	}
	for _, c := range []byte(name) {
		if !alnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("the name %q holds %q: use letters, digits, '.', '_' and '-'", name, c)
		}
	}
	return nil
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

// ErrNoIdentity is wrapped by IdentityOf's error for a certificate that
// holds no Sepal identity.
var ErrNoIdentity = errors.New("no Sepal identity (a URI sepal:ROLE:NAME) in the certificate")

// IdentityOf returns the Sepal identity of a client certificate: its one
// URI subject alternative name sepal:ROLE:NAME with a known role and a
// valid name. None (ErrNoIdentity), several, or a malformed one is an
// error.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range c.URIs {
		if !strings.EqualFold(u.Scheme, IdentityScheme) {
			continue
		}
		role, name, ok := strings.Cut(u.Opaque, ":")
		if !ok {
			return Identity{}, fmt.Errorf("malformed Sepal identity %q: want sepal:ROLE:NAME", u.String())
		}
		id, err := NewIdentity(role, name)
		if err != nil {
			return Identity{}, fmt.Errorf("malformed Sepal identity %q: %w", u.String(), err)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, ErrNoIdentity
	case 1:
		return found[0], nil
	}
	return Identity{}, fmt.Errorf("the certificate holds %d Sepal identities (%s and %s); a client certificate holds one", len(found), found[0], found[1])
}
