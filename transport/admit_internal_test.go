package transport

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/selfsigned"
)

type fixedCAs struct {
	pool *x509.CertPool
	crl  *x509.RevocationList
}

func (f fixedCAs) ClientCAs() (*x509.CertPool, *x509.RevocationList) { return f.pool, f.crl }

type noCert struct{}

func (noCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }

// TestAdmitCostsOneIdentity: admitting a certificate costs no more than
// reading its identity once; the description of a refusal (its subject,
// issuer and serial as strings) is built only for a refusal.
func TestAdmitCostsOneIdentity(t *testing.T) {
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{Role: RoleNode, Name: "alice"}
	pair, err := ca.IssueClient(selfsigned.ClientOptions{CommonName: id.Name, URIs: []*url.URL{id.URI()}})
	if err != nil {
		t.Fatal(err)
	}
	crl, err := ca.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	st := newClientAuthState(noCert{}, ClientAuth{CAs: fixedCAs{pool, crl.List}, Role: RoleNode})
	tc := st.current()
	certs := []*x509.Certificate{pair.Leaf}
	if err := st.admit(tc, certs); err != nil {
		t.Fatal(err)
	}
	admit := testing.AllocsPerRun(100, func() { st.admit(tc, certs) })
	identity := testing.AllocsPerRun(100, func() { IdentityOf(pair.Leaf) })
	if admit > identity {
		t.Errorf("admitting a certificate: %v allocations, reading its identity: %v; want no more", admit, identity)
	}
	// A refusal still describes the certificate.
	st2 := newClientAuthState(noCert{}, ClientAuth{CAs: fixedCAs{pool, crl.List}, Role: RoleServerApp})
	e, _ := st2.admit(st2.current(), certs).(*ClientCertError)
	if e == nil || e.Cause != CauseWrongRole || e.Identity != id || e.Subject == "" || e.Issuer == "" || e.Serial == "" {
		t.Errorf("refusal %+v", e)
	}
}
