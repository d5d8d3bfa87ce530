package selfsigned

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/transport"
)

func nodeURI(t testing.TB, name string) []*url.URL {
	t.Helper()
	id, err := transport.NewIdentity(transport.RoleNode, name)
	if err != nil {
		t.Fatal(err)
	}
	return []*url.URL{id.URI()}
}

func TestIssueClient(t *testing.T) {
	ca := newTestCA(t)
	before := time.Now()
	p, err := ca.IssueClient(ClientOptions{CommonName: "alice", OrganizationalUnit: "node", URIs: nodeURI(t, "alice")})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Leaf
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage %v, want clientAuth only", c.ExtKeyUsage)
	}
	if c.Subject.CommonName != "alice" || len(c.Subject.OrganizationalUnit) != 1 || c.Subject.OrganizationalUnit[0] != "node" {
		t.Errorf("subject %s", c.Subject)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "sepal:node:alice" {
		t.Errorf("URIs %v, want sepal:node:alice", c.URIs)
	}
	if id, err := transport.IdentityOf(c); err != nil || id.Name != "alice" || id.Role != transport.RoleNode {
		t.Errorf("IdentityOf = %v, %v", id, err)
	}
	if len(c.DNSNames)+len(c.IPAddresses) != 0 || c.IsCA {
		t.Errorf("a client certificate with DNS/IP names or IsCA: %v %v %v", c.DNSNames, c.IPAddresses, c.IsCA)
	}
	if d := c.NotAfter.Sub(before); d < DefaultClientValidity-time.Minute || d > DefaultClientValidity+time.Minute {
		t.Errorf("validity %v, want about %v", d, DefaultClientValidity)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the client certificate does not verify for clientAuth: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("the client certificate verifies as a server certificate")
	}
	for _, o := range []ClientOptions{
		{},
		{CommonName: strings.Repeat("x", 65)},
		{CommonName: "late", NotAfter: ca.Cert.NotAfter.Add(time.Hour)},
	} {
		if _, err := ca.IssueClient(o); err == nil {
			t.Errorf("IssueClient(%+v) succeeded", o)
		}
	}
}

func TestSignCRL(t *testing.T) {
	ca := newTestCA(t)
	a, _ := ca.IssueClient(ClientOptions{CommonName: "a"})
	b, _ := ca.IssueClient(ClientOptions{CommonName: "b"})
	first, err := ca.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if first.List.Number.Int64() != 1 || len(first.List.RevokedCertificateEntries) != 0 {
		t.Errorf("first CRL: number %v, %d entries; want 1, 0", first.List.Number, len(first.List.RevokedCertificateEntries))
	}
	if blk, _ := pem.Decode(first.PEM); blk == nil || blk.Type != "X509 CRL" {
		t.Errorf("PEM %q", first.PEM)
	}
	second, err := ca.SignCRL(first.List, []*big.Int{a.Leaf.SerialNumber, a.Leaf.SerialNumber}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	third, err := ca.SignCRL(second.List, []*big.Int{a.Leaf.SerialNumber}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if third.List.Number.Int64() != 3 || len(third.List.RevokedCertificateEntries) != 1 {
		t.Errorf("third CRL: number %v, %d entries; want 3, 1 (no duplicate)", third.List.Number, len(third.List.RevokedCertificateEntries))
	}
	if !Revoked(third.List, a.Leaf) || Revoked(third.List, b.Leaf) || Revoked(nil, a.Leaf) {
		t.Error("Revoked is wrong")
	}
	// The same serial from another CA is not revoked by this list.
	other := newTestCA(t)
	x, _ := other.IssueClient(ClientOptions{CommonName: "x"})
	x.Leaf.SerialNumber = a.Leaf.SerialNumber
	if Revoked(third.List, x.Leaf) {
		t.Error("a CRL revokes a certificate of another CA")
	}
	if err := third.List.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("the CRL does not verify with its CA: %v", err)
	}
	if err := third.List.CheckSignatureFrom(other.Cert); err == nil {
		t.Error("the CRL verifies with another CA")
	}
}
